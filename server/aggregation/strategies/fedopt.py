"""FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, https://arxiv.org/abs/2003.00295, Algorithm 2).

The example-weighted mean delta Δ is a pseudo-gradient for a server optimiser:
m ← β₁·m + (1 − β₁)·Δ;  v ← v + Δ² (Adagrad) | β₂·v + (1 − β₂)·Δ² (Adam) | v − (1 − β₂)·Δ²·sign(v − Δ²) (Yogi);
w ← w + η·m / (√v + τ). As in the paper there is no bias correction and v starts at τ².
Options: `eta` (server learning rate; default 0.1 for FedAdagrad, whose v only grows, 0.01 for FedAdam and
FedYogi), `beta1` (0.9), `beta2` (0.99; not used by Adagrad), `tau` (adaptivity, 1e-3).
"""

from __future__ import annotations

import torch

from fedstream.server.aggregation.strategies.options import number
from fedstream.server.aggregation.strategies.server_optimizer import ServerOptimizer


class FedOpt(ServerOptimizer):
    """The shared part; subclasses say how the second moment v is updated."""

    buffer_names = ("m", "v")
    default_eta = 0.01

    def __init__(self, eta: float | str | None = None, beta1: float | str = 0.9, beta2: float | str = 0.99,
                 tau: float | str = 1e-3) -> None:
        super().__init__()
        self.eta = number(self.name, "eta", self.default_eta if eta is None else eta, 0.0, low_open=True)
        self.beta1 = number(self.name, "beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = number(self.name, "beta2", beta2, 0.0, 1.0, high_open=True)
        self.tau = number(self.name, "tau", tau, 0.0, low_open=True)

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        """Updates v in place from Δ² (sq)."""
        raise NotImplementedError

    def step(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        m = self.buffer("m", name, delta)
        v = self.buffer("v", name, delta, fill=self.tau ** 2)
        m.mul_(self.beta1).add_(delta, alpha=1.0 - self.beta1)
        self.second_moment(v, delta.square())
        return self.eta * m / (v.sqrt() + self.tau)


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    default_eta = 0.1

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.add_(sq)


class FedAdam(FedOpt):
    name = "fedadam"

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.mul_(self.beta2).add_(sq, alpha=1.0 - self.beta2)


class FedYogi(FedOpt):
    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, sq: torch.Tensor) -> None:
        v.sub_((1.0 - self.beta2) * sq * torch.sign(v - sq))
