"""The upper line for federated runs: the same model trained centrally on all of a task's training data.

    python experiments/centralized.py --task digits --epochs 30
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import TensorDataset

from fedstream.common.tasks import Task, load_task


def train_centrally(task: Task, epochs: int, seed: int = 0, data: TensorDataset | None = None) -> list[float]:
    """Test accuracy after each epoch of plain minibatch training with the task's own optimiser."""
    torch.manual_seed(seed)
    model = task.make_model()
    settings = task.defaults
    settings.local_epochs = 1
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        task.train(model, data or task.train_data, settings, torch.device("cpu"), generator)
        history.append(task.evaluate(model, task.test_data, torch.device("cpu"))["accuracy"])
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    history = train_centrally(load_task(args.task), args.epochs, args.seed)
    best = max(range(len(history)), key=history.__getitem__)
    print(f"centralised {args.task}: accuracy after epoch {args.epochs}: {history[-1]:.4f} "
          f"(best {history[best]:.4f}, epoch {best + 1})")


if __name__ == "__main__":
    main()
