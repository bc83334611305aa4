"""Random data and a model of a chosen size, for benchmarks where communication must dominate.

Options: see OPTIONS below (and docs/tasks.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedstream.common.tasks.base import Task, TrainSettings
from fedstream.common.tasks.options import check_task_options

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
CLASSES = 10
OPTIONS = {
    "params": "model size in parameters, with an optional K, M or G suffix (default 1M)",
    "steps": "local SGD steps per round; 0 for no training (default 1)",
    "width": "hidden width (default 64; 1024 from 2M parameters; 4096 above 100M)",
    "samples": "training examples per client (default 256)",
    "data_seed": "seed of the random data (default 0)",
}


def parse_count(text: str) -> int:
    """'25M' -> 25_000_000; plain integers pass through."""
    text = text.strip().lower()
    try:
        if text and text[-1] in _SUFFIX:
            return int(float(text[:-1]) * _SUFFIX[text[-1]])
        return int(float(text))
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a count; use a number with an optional K, M or G suffix") from None


class SyntheticMLP(nn.Module):
    """Square hidden layers sized so the whole model has about the requested number of parameters."""

    def __init__(self, params: int, width: int) -> None:
        super().__init__()
        head = width * CLASSES + CLASSES
        per_layer = width * width + width
        layers = max(1, round((params - head) / per_layer))
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def make_task(options: dict[str, str]) -> Task:
    check_task_options("synthetic", options, OPTIONS)
    params = parse_count(options.get("params", "1M"))
    width = int(options.get("width", 4096 if params > 100_000_000 else (1024 if params >= 2_000_000 else 64)))
    steps = int(options.get("steps", 1))
    samples = int(options.get("samples", 256))
    gen = torch.Generator().manual_seed(int(options.get("data_seed", 0)))
    x = torch.randn(samples, width, generator=gen)
    y = torch.randint(0, CLASSES, (samples,), generator=gen)
    xt = torch.randn(64, width, generator=gen)
    yt = torch.randint(0, CLASSES, (64,), generator=gen)

    def make_model() -> nn.Module:
        with torch.device("cpu"):
            return SyntheticMLP(params, width)

    return Task(
        name="synthetic",
        make_model=make_model,
        train_data=TensorDataset(x, y),
        test_data=TensorDataset(xt, yt),
        defaults=TrainSettings(local_epochs=1 if steps > 0 else 0, batch_size=32, learning_rate=0.01,
                               max_steps=steps),
        make_optimizer=lambda params, s: torch.optim.SGD(params, lr=s.learning_rate),
    )
