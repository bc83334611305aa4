"""scikit-learn's bundled 8×8 digits (1,797 images, no download) with a small MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedstream.common.tasks.base import Task, TrainSettings
from fedstream.common.tasks.options import check_task_options

TEST_FRACTION = 0.2
SPLIT_SEED = 0
OPTIONS = {
    "hidden": "width of the MLP's two hidden layers (default 128)",
    "epochs": "local epochs per round (default 3)",
    "batch_size": "local minibatch size (default 32)",
    "lr": "local SGD learning rate, momentum 0.9 (default 0.05)",
}


def _model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    return x, y


def make_task(options: dict[str, str]) -> Task:
    check_task_options("digits", options, OPTIONS)
    hidden = int(options.get("hidden", 128))
    x, y = load_digits_tensors()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]

    def make_model() -> nn.Module:
        return _model(hidden)

    return Task(
        name="digits",
        make_model=make_model,
        train_data=TensorDataset(x[train], y[train]),
        test_data=TensorDataset(x[test], y[test]),
        defaults=TrainSettings(local_epochs=int(options.get("epochs", 3)), batch_size=int(options.get("batch_size", 32)),
                               learning_rate=float(options.get("lr", 0.05))),
    )
