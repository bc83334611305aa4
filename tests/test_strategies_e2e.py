"""Every strategy name through a real server and real client processes on digits (three of them wrapped in
central DP with fixed or adaptive clipping, or local DP, so those paths run end to end too).

Each run's final model must equal the strategy replayed in-process on the deltas the clients uploaded
(saved with --save-updates), so the whole distributed path (spool, validation, folding, windows, optimiser
state across rounds, DP noise with a fixed seed) is checked, not just that the run finished.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.cli import build_parser
from fedstream.client.privacy import delta_norm
from fedstream.common.tasks import load_task
from fedstream.server.aggregation.privacy import make_dp_strategy
from fedstream.server.intake.spool import UpdateInfo
from fedstream.server.aggregation.strategies import make_strategy
from tests.harness import start_client, start_server, wait_all
from tests.test_strategies import round_updates

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS, SEED = 2, 2, 7
CASES = {
    "fedavg": [],
    "fedavgm+dp-central": ["--dp", "central", "--clip", "2.0", "--noise-multiplier", "0.01",
                           "--dp-option", "noise_seed=5"],
    "fedprox": ["--strategy-option", "mu=0.1"],
    "fedadagrad": [],
    "fedadam+dp-adaptive": ["--dp", "central", "--clip", "adaptive", "--noise-multiplier", "0.05",
                            "--dp-option", "initial_clip=0.5", "--dp-option", "noise_seed=9"],
    "fedyogi": [],
    "median": [],
    "trimmed-mean+dp-local": ["--dp", "local", "--clip", "0.5", "--noise-multiplier", "0"],
    "krum": ["--strategy-option", "f=0"],
    "multi-krum": ["--strategy-option", "m=2"],
}


def server_flags(case: str) -> list[str]:
    return ["--strategy", case.split("+")[0], *CASES[case]]


def build_strategy(flags: list[str]):
    """The strategy exactly as `fedstream server` builds it from these flags."""
    _, children = build_parser()
    args = children["server"].parse_args(flags)
    strategy = make_strategy(args.strategy, dict(args.strategy_option))
    if args.dp:
        strategy = make_dp_strategy(strategy, args.dp, args.clip or "1.0", args.noise_multiplier, args.delta,
                                    args.target_epsilon, dict(args.dp_option))
    return strategy


def saved_updates(directory: Path) -> dict[int, list[tuple[str, dict, int]]]:
    by_round: dict[int, list[tuple[str, dict, int]]] = defaultdict(list)
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        by_round[int(meta["round"])].append((meta["client_id"], load_file(str(path)), int(meta["num_examples"])))
    return {r: sorted(items, key=lambda item: item[0]) for r, items in by_round.items()}


@pytest.mark.filterwarnings("ignore:Optimal order is the")
@pytest.mark.parametrize("case", list(CASES))
def test_strategy_runs_end_to_end_and_matches_its_in_process_replay(tmp_path: Path, case: str) -> None:
    flags = server_flags(case)
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", str(ROUNDS), "--min-clients", str(CLIENTS), "--seed", str(SEED),
                          "--round-timeout", "60", "--local-epochs", "1", "--log-level", "WARNING", *flags)
    try:
        procs = [start_client(server, "--partition", f"{i}/{CLIENTS}", "--device", "cpu",
                              "--save-updates", str(tmp_path / "updates")) for i in range(CLIENTS)]
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0] * CLIENTS, [server.client_log(i)[-2000:] for i in range(CLIENTS)]
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(r["clients"] == CLIENTS for r in records)
    assert records[-1]["eval_accuracy"] > 0.2, records

    torch.manual_seed(SEED)
    state = load_task("digits").make_model().state_dict()
    strategy = build_strategy(flags)
    rounds = saved_updates(tmp_path / "updates")
    for number in range(1, ROUNDS + 1):
        ids, deltas, examples = zip(*rounds[number])
        if "dp-local" in case:
            assert all(delta_norm(d) <= 0.5 * (1 + 1e-5) for d in deltas)
        assert strategy.begin_round(number, CLIENTS, CLIENTS) is None
        updates = round_updates(tmp_path / "replay", strategy, state, list(deltas), list(examples))
        for update, client_id in zip(updates.updates, ids):
            update.info = UpdateInfo(client_id, number, number - 1, update.info.num_examples, sq_norm=update.info.sq_norm)
        state = strategy.apply(state, strategy.aggregate(updates))
        replayed = strategy.round_metrics()
        for key in ("epsilon", "clip_norm"):
            if key in replayed:
                assert math.isclose(records[number - 1][key], replayed[key], rel_tol=1e-9), (key, records)
    assert ("epsilon" in records[-1]) == ("central" in flags)
    final = load_file(str(run_dir / "model.safetensors"))
    for name, tensor in state.items():
        assert torch.allclose(final[name], tensor, atol=2e-5, rtol=1e-5), (case, name)
