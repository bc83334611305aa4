"""The task interface: a model, its data, and how to train and evaluate it."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedstream.common.training.partition import partition_indices
from fedstream.common.training.precision import autocast, grad_scaler


@dataclass
class TrainSettings:
    """Local training knobs the server may override per round."""

    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    proximal_mu: float = 0.0
    max_steps: int | None = None
    slowdown: float = 1.0
    amp: str = "off"


@dataclass
class ClientSplit:
    """One client's share of a task's data: what it trains on, and its own held-out examples for the metrics of
    its personalised model (None when the task has no per-client held-out data)."""

    train: TensorDataset
    personal_test: TensorDataset | None = None


@dataclass
class Task:
    """Everything a federation needs to know about one learning problem.

    A user task is a function `make_task(options: dict[str, str]) -> Task`, named on the command line as
    `--task package.module:make_task`.
    """

    name: str
    make_model: Callable[[], nn.Module]
    train_data: TensorDataset
    test_data: TensorDataset
    defaults: TrainSettings
    make_optimizer: Callable[[list[nn.Parameter], TrainSettings], torch.optim.Optimizer] | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    unsupported: Mapping[str, str] = field(default_factory=dict)  # a feature ("pruning") -> why it is refused
    _scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict, repr=False, compare=False)

    @property
    def train_labels(self) -> torch.Tensor:
        return self.train_data.tensors[1]

    def federated_state(self, model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
        """The tensors that travel and are aggregated (live views of the model's own tensors)."""
        return OrderedDict(model.state_dict())

    def load_federated_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Puts federated tensors into the model; this default adopts them without a copy (the server's eval
        model aliases the global tensors). A client copies instead (client/device_copy.py:load_state)."""
        model.load_state_dict(state, assign=True)

    def client_split(self, index: int, parts: int, scheme: str = "iid", alpha: float = 0.5,
                     seed: int = 0) -> ClientSplit:
        """Client `index` of `parts`: its disjoint share of the training data (`--partition I/N`)."""
        indices = partition_indices(self.train_labels, index, parts, scheme, alpha, seed)
        return ClientSplit(TensorDataset(*(t[indices] for t in self.train_data.tensors)))

    def optimizer(self, params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
        if self.make_optimizer is not None:
            return self.make_optimizer(params, settings)
        return torch.optim.SGD(params, lr=settings.learning_rate, momentum=0.9)

    def train(
        self,
        model: nn.Module,
        data: TensorDataset,
        settings: TrainSettings,
        device: torch.device,
        generator: torch.Generator,
        global_params: Mapping[str, torch.Tensor] | None = None,
        interrupt: threading.Event | None = None,
    ) -> dict[str, float]:
        """Local epochs of minibatch training; adds FedProx's (μ/2)‖w − w_global‖² when μ > 0. Stops after the
        current step once interrupt is set (the server ended the run)."""
        model.train()
        optimizer = self.optimizer([p for p in model.parameters() if p.requires_grad], settings)
        scaler = self._scaler(device, settings.amp)
        anchors = None
        if settings.proximal_mu > 0 and global_params is not None:  # frozen and local-only tensors do not move
            anchors = {n: global_params[n].to(device) for n, p in model.named_parameters()
                       if p.requires_grad and n in global_params}
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
        seen, steps = 0, 0
        started = time.perf_counter()
        for _ in range(max(settings.local_epochs, 0)):
            if stop_training(settings, steps, interrupt):
                break
            for x, y in batches(data, settings.batch_size, generator, device):
                if stop_training(settings, steps, interrupt):
                    break
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, settings.amp):
                    loss = self.loss_fn(model(x), y)
                objective = loss.float()
                if anchors is not None:
                    prox = sum(torch.sum((p - anchors[n]) ** 2) for n, p in model.named_parameters() if n in anchors)
                    objective = objective + 0.5 * settings.proximal_mu * prox
                if scaler is None:
                    objective.backward()
                    optimizer.step()
                else:
                    scaler.scale(objective).backward()
                    scaler.step(optimizer)  # skipped when the scaled gradients overflowed
                    scaler.update()
                total += loss.detach().double() * len(y)
                seen += len(y)
                steps += 1
        mean_loss = float(total) / seen if seen else 0.0
        if settings.slowdown > 1.0:
            (interrupt or threading.Event()).wait((time.perf_counter() - started) * (settings.slowdown - 1.0))
        return {"train_loss": mean_loss, "steps": float(steps)}

    def _scaler(self, device: torch.device, amp: str) -> "torch.amp.GradScaler | None":
        """fp16's loss scaler, kept from round to round so each round starts at the scale the last one found."""
        if amp != "fp16":
            return grad_scaler(device, amp)
        if device.type not in self._scalers:
            self._scalers[device.type] = grad_scaler(device, amp)
        return self._scalers[device.type]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TensorDataset, device: torch.device, batch_size: int = 512) -> dict[str, float]:
        model.eval()
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            total_loss += float(self.loss_fn(out, y, reduction="sum"))
            if out.dim() == 2 and y.dtype == torch.long:
                correct += int((out.argmax(dim=1) == y).sum())
            seen += len(y)
        return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


def stop_training(settings: TrainSettings, steps: int, interrupt: threading.Event | None) -> bool:
    """Whether local training ends before its next step: max_steps reached, or the server ended the run."""
    return (settings.max_steps is not None and steps >= settings.max_steps) or (
        interrupt is not None and interrupt.is_set())


def batches(data: TensorDataset, batch_size: int, generator: torch.Generator,
            device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """One shuffled epoch of minibatches, indexed straight out of the dataset's tensors (no per-example collate)."""
    order = torch.randperm(len(data), generator=generator)
    non_blocking = device.type == "cuda"
    step = max(batch_size, 1)
    for start in range(0, len(order), step):
        index = order[start : start + step]
        yield tuple(t[index].to(device, non_blocking=non_blocking) for t in data.tensors)
