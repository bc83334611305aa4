"""The digits task on a device of fixed speed: every training step takes `step_ms` longer (a sleep in forward).

Training on digits takes milliseconds, which the noise of a shared machine swamps; pacing each step makes
"a client 5× slower" (--slowdown 5) mean seconds, not jitter. Evaluation is not paced. Loading the task also
runs one small unpaced training pass, so torch's first-use costs (seconds per process on a busy machine) are
paid before the client joins instead of inside its first round. Use it as
`--task experiments.paced_task:make_task --task-option step_ms=40` on the server and on every client.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from torch.utils.data import TensorDataset

from fedstream.common.tasks import Task, TrainSettings, check_task_options
from fedstream.common.tasks.digits import OPTIONS as DIGITS_OPTIONS
from fedstream.common.tasks.digits import make_task as make_digits


class PacedModel(nn.Module):
    """Wraps a model; each forward pass in training mode first sleeps `step_seconds`."""

    def __init__(self, inner: nn.Module, step_seconds: float) -> None:
        super().__init__()
        self.inner = inner
        self.step_seconds = step_seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.step_seconds > 0:
            time.sleep(self.step_seconds)
        return self.inner(x)


def make_task(options: dict[str, str]) -> Task:
    check_task_options("digits-paced", options, {**DIGITS_OPTIONS, "step_ms": "milliseconds each training step takes"})
    step_seconds = float(options.get("step_ms", 40)) / 1000
    if step_seconds < 0:
        raise ValueError(f"step_ms must be >= 0, got {options['step_ms']}")
    task = make_digits({k: v for k, v in options.items() if k != "step_ms"})
    make_inner = task.make_model
    warm = TensorDataset(*(t[:64] for t in task.train_data.tensors))
    task.train(make_inner(), warm, TrainSettings(local_epochs=1, batch_size=32), torch.device("cpu"),
               torch.Generator().manual_seed(0))
    task.make_model = lambda: PacedModel(make_inner(), step_seconds)
    task.name = "digits-paced"
    return task
