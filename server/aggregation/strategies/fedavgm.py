"""FedAvgM (Hsu et al. 2019, https://arxiv.org/abs/1909.06335): FedAvg with momentum on the server.

v ← β·v + Δ, then w ← w + η·v, where Δ is the example-weighted mean delta. Options: `momentum` (β, default
0.9) and `server_lr` (η, default 1.0).
"""

from __future__ import annotations

import torch

from fedstream.server.aggregation.strategies.options import number
from fedstream.server.aggregation.strategies.server_optimizer import ServerOptimizer


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    buffer_names = ("momentum",)

    def __init__(self, momentum: float | str = 0.9, server_lr: float | str = 1.0) -> None:
        super().__init__()
        self.momentum = number(self.name, "momentum", momentum, 0.0, 1.0, high_open=True)
        self.server_lr = number(self.name, "server_lr", server_lr, 0.0, low_open=True)

    def step(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        v = self.buffer("momentum", name, delta)
        v.mul_(self.momentum).add_(delta)
        return v * self.server_lr
