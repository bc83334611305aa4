"""Sample-level DP-SGD inside a client, with Opacus: each of the client's own examples is protected.

Per-example gradients are clipped to L2 norm C and Gaussian noise N(0, (σ·C)²) is added to each batch's sum;
batches are Poisson-sampled (each example independently with rate q = batch size / examples), and Opacus's RDP
accountant adds up this client's ε over every round it trains. This is record-level privacy towards anyone who
sees the uploads (the server included), independent of the server's client-level `--dp`. The noise and the
sampling draw from a generator seeded by the OS's secure randomness: the server, which chose the round seed,
cannot predict them. Opacus wraps the model only while it trains; its hooks and per-sample buffers are removed
afterwards, so the model, its state dict and the upload keep their usual shape. The training loss is not
uploaded (per-example losses are what membership inference reads); `--slowdown` does not apply here.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import warnings
from dataclasses import dataclass
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedstream.common.tasks import Task, TrainSettings
from fedstream.common.tasks.base import stop_training

log = logging.getLogger("fedstream.client")


@dataclass(frozen=True)
class DpSgdSettings:
    """σ (noise multiplier), C (per-example gradient norm) and the δ at which ε is reported."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"DP-SGD noise multiplier must be finite and > 0, got {self.noise_multiplier}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"DP-SGD clipping norm must be finite and > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"DP-SGD delta must be in (0, 1), got {self.delta}")


def check_model(model: nn.Module) -> None:
    """Refuses, before the client joins, a model Opacus cannot compute per-example gradients for."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ValueError(f"DP-SGD cannot train this task's model: {'; '.join(map(str, problems[:3]))}. Swap "
                         "BatchNorm for GroupNorm (opacus.validators.ModuleValidator.fix does it) or drop --dp-sgd-noise")


class DpSgdTrainer:
    """Trains a task's model with DP-SGD round after round, keeping one accountant for the client's data.

    The accountant lives in this process: a restarted client starts counting again from zero.
    """

    def __init__(self, settings: DpSgdSettings) -> None:
        from opacus.accountants import RDPAccountant

        self.settings = settings
        self.accountant = RDPAccountant()
        self._warned_prox = False

    @property
    def steps(self) -> int:
        """Noisy steps taken over all rounds (what the accountant has counted)."""
        return sum(int(n) for *_, n in self.accountant.history)

    def epsilon(self) -> float:
        """ε spent so far at the configured δ (0 before the first step)."""
        return float(self.accountant.get_epsilon(self.settings.delta)) if self.accountant.history else 0.0

    def train(self, task: Task, model: nn.Module, data: TensorDataset, settings: TrainSettings, device: torch.device,
              interrupt: threading.Event | None = None) -> dict[str, float]:
        """One round of local epochs; returns steps and ε, and no training loss (it would leak membership)."""
        from opacus import GradSampleModule
        from opacus.data_loader import DPDataLoader
        from opacus.optimizers import DPOptimizer

        if settings.proximal_mu > 0 and not self._warned_prox:
            log.warning("DP-SGD trains without FedProx's proximal term (its gradient is not per example)")
            self._warned_prox = True
        z, clip = self.settings.noise_multiplier, self.settings.max_grad_norm
        batch = max(1, min(settings.batch_size, len(data)))
        secure = torch.Generator().manual_seed(secrets.randbits(63))
        noise = torch.Generator(device).manual_seed(secrets.randbits(63)) if device.type == "cuda" else secure
        loader = DPDataLoader(data, sample_rate=batch / len(data), generator=secure)
        model.train()
        wrapped = GradSampleModule(model)
        steps = 0
        try:
            optimizer = DPOptimizer(task.optimizer([p for p in model.parameters() if p.requires_grad], settings),
                                    noise_multiplier=z, max_grad_norm=clip, expected_batch_size=batch, generator=noise)
            with warnings.catch_warnings():
                # Inputs need no gradient, and Opacus's full backward hooks make torch say so on every step.
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                for _ in range(max(settings.local_epochs, 0)):
                    if stop_training(settings, steps, interrupt):
                        break
                    for x, y in loader:
                        if stop_training(settings, steps, interrupt):
                            break
                        optimizer.zero_grad(set_to_none=True)
                        # An empty Poisson batch still takes its noisy step: the analysis counts every draw. Its
                        # per-example gradients are an empty set (some models cannot run a batch of 0 rows).
                        if len(y):
                            task.loss_fn(wrapped(x.to(device)), y.to(device)).backward()
                        else:
                            for param in (q for q in model.parameters() if q.requires_grad):
                                param.grad_sample = torch.zeros((0, *param.shape), device=param.device,
                                                                dtype=param.dtype)
                        optimizer.step()
                        self.accountant.step(noise_multiplier=z, sample_rate=loader.sample_rate)
                        steps += 1
        finally:
            wrapped._close()
            _strip_opacus_state(model)
        return {"steps": float(steps), "dp_sgd_epsilon": self.epsilon()}


def _strip_opacus_state(model: nn.Module) -> None:
    """Drops what Opacus leaves on parameters after its own cleanup (the clipped gradient sums)."""
    for p in model.parameters():
        p.grad = None
        if hasattr(p, "summed_grad"):
            del p.summed_grad
