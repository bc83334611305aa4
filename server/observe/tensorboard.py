"""TensorBoard event files of a run (`runs/<id>/tensorboard/`), written from the round records.

Look with `tensorboard --logdir runs/<id>/tensorboard`. The step is the round (sync) or the version (async).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from torch.utils.tensorboard import SummaryWriter

SCALARS = {
    "eval_accuracy": "eval/accuracy",
    "eval_loss": "eval/loss",
    "train_loss": "train/loss",
    "federated_eval_accuracy": "federated_eval/accuracy",
    "federated_eval_loss": "federated_eval/loss",
    "bytes_up": "bytes/up",
    "bytes_down": "bytes/down",
    "epsilon": "privacy/epsilon",
    "staleness_mean": "staleness/mean",
    "staleness_max": "staleness/max",
    "refused_stale": "staleness/refused",
    "clients": "round/clients",
    "seconds": "round/seconds",
}


class TensorBoardLog:
    """A `RunView` sink: each round record becomes one scalar per known, finite, numeric key."""

    def __init__(self, run_dir: Path, flush_secs: int = 5) -> None:
        self.directory = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.directory), flush_secs=flush_secs)

    def round_recorded(self, record: Mapping[str, Any]) -> None:
        step = record.get("round", record.get("version"))
        if not isinstance(step, int):
            raise ValueError(f"round record has no integer 'round' or 'version' (got {step!r}); "
                             "it is the TensorBoard step")
        for key, tag in SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
