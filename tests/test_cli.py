"""The CLI contract: bad flags exit 2 with one line naming the flag; config files mirror flags; flags win."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedstream.cli import build_parser, main
from fedstream.cli.options import parse_with_config

CLI = [sys.executable, "-m", "fedstream.cli"]


@pytest.mark.parametrize("argv,flag", [
    (["server", "--rounds", "0"], "--rounds"),
    (["server", "--address", "nohost"], "--address"),
    (["server", "--upload-codec", "gzip9"], "--upload-codec"),
    (["server", "--strategy", "nope"], "--strategy"),
    (["server", "--task-option", "noequals"], "--task-option"),
    (["client", "--partition", "4/4"], "--partition"),
    (["client", "--partition-scheme", "zipf"], "--partition-scheme"),
    (["client", "--alpha", "-1"], "--alpha"),
    (["client", "--device", "tpu"], "--device"),
    (["client", "--amp", "fp8"], "--amp"),
    (["server", "--mode", "async", "--reproducible"], "--reproducible"),
    (["client", "--dp-sgd-noise", "1", "--dp-sgd-delta", "2"], "--dp-sgd-delta"),
    (["client", "--dp-sgd-noise", "1", "--amp", "bf16"], "--amp"),
    (["server", "--mode", "async", "--dp", "central", "--clip", "1", "--noise-multiplier", "1"], "--dp local"),
    (["client", "--dp-sgd-noise", "inf"], "--dp-sgd-noise"),
])
def test_bad_values_exit_2_with_a_line_naming_the_flag(argv: list[str], flag: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and f"see fedstream {argv[0]} --help" in lines[0], lines


def test_a_bad_value_ends_the_real_process_with_exit_2_and_one_line() -> None:
    """The same contract as a user meets it: a process, nothing else on stderr (no warning, no traceback)."""
    result = subprocess.run(CLI + ["client", "--alpha", "-1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--alpha" in lines[0] and "see fedstream client --help" in lines[0], lines


def test_config_file_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('rounds = 7\nmin-clients = 2\nstrategy = "fedavg"\n[task-option]\nparams = "2M"\n')
    _, children = build_parser()
    args = parse_with_config(children["server"], ["--config", str(config), "--rounds", "3"])
    assert args.rounds == 3 and args.min_clients == 2 and args.task_option == [("params", "2M")]


def test_config_file_with_unknown_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("roundz = 7\n")
    result = subprocess.run(CLI + ["server", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "roundz" in result.stderr.strip().splitlines()[-1]


def test_eval_every_skips_server_evaluation_but_never_the_last_round(tmp_path) -> None:
    from fedstream.common.tasks import load_task
    from fedstream.server.core.config import ServerConfig
    from fedstream.server.core.coordinator import Coordinator
    from fedstream.server.modes import SyncRounds
    from fedstream.server.publication.progress import RoundProgress
    from fedstream.server.publication.runlog import RunLog
    from fedstream.server.aggregation.strategies import make_strategy

    coordinator = Coordinator(load_task("digits", {"hidden": "8"}), make_strategy("fedavg"),
                              ServerConfig(run_dir=tmp_path, rounds=5, eval_every=2), SyncRounds())
    state = coordinator.global_state
    assert [coordinator.evaluate_after(n, state)["accuracy"] is None for n in range(1, 6)] == [
        True, False, True, False, False]
    fresh = {k: v.clone() for k, v in state.items()}
    coordinator.evaluate_after(1, fresh)
    held = dict(coordinator.model.state_dict())
    assert all(held[k].data_ptr() == fresh[k].data_ptr() for k in fresh), \
        "a skipped evaluation must still let go of the previous version (the model would keep it alive)"
    record = {"round": 1, "clients": 1, "selected": 1, "eval_accuracy": None, "eval_loss": None,
              "bytes_up": 0, "bytes_down": 0, "seconds": 0.1, "train_loss": None}
    RoundProgress(5).round_done(record)  # prints "acc -" instead of failing on None
    log = RunLog(tmp_path / "log")
    log.append(record)
    assert log.plot() is None, "a run with no evaluated round has nothing to plot"
    log.append({**record, "round": 2, "eval_accuracy": 0.5, "eval_loss": 1.0})
    assert log.plot() is not None
