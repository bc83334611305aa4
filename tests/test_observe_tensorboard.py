"""TensorBoard event files written from round records, read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedstream.server.observe.run_view import RunView
from fedstream.server.observe.tensorboard import TensorBoardLog


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_sync_rounds_are_read_back(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path)
    view = RunView(sinks=[log])
    for r in (1, 2, 3):
        view.round_recorded({"round": r, "clients": 4, "eval_accuracy": 0.5 + r / 10, "eval_loss": 1.0 / r,
                             "train_loss": 2.0 / r, "bytes_up": 1000 * r, "bytes_down": 2000 * r, "seconds": 0.5,
                             "epsilon": 0.1 * r, "dropped": {"c": "broke"}})
    view.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["eval/accuracy"]] == [1, 2, 3]
    assert scalars["eval/accuracy"][2][1] == pytest.approx(0.8)
    assert scalars["train/loss"][1][1] == pytest.approx(1.0)
    assert scalars["bytes/up"] == [(1, 1000.0), (2, 2000.0), (3, 3000.0)]
    assert scalars["privacy/epsilon"][0][1] == pytest.approx(0.1)
    assert "staleness/mean" not in scalars


def test_async_versions_carry_staleness_and_skip_missing_values(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path)
    log.round_recorded({"version": 1, "staleness_mean": 0.5, "staleness_max": 2, "eval_accuracy": None,
                        "eval_loss": math.nan})
    log.round_recorded({"version": 2, "staleness_mean": 1.5, "staleness_max": 3, "eval_accuracy": 0.9})
    log.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["staleness/max"] == [(1, 2.0), (2, 3.0)]
    assert scalars["eval/accuracy"] == [(2, pytest.approx(0.9))]
    assert "eval/loss" not in scalars


def test_a_record_without_a_step_is_refused(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path)
    with pytest.raises(ValueError, match="no integer 'round' or 'version'"):
        log.round_recorded({"eval_accuracy": 0.5})
    log.close()
