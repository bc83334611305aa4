"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg whose clients add (μ/2)‖w − w_global‖².

The server side is FedAvg; μ travels to clients in TrainConfig.proximal_mu and `Task.train` adds the term.
Option: `mu` (default 0.01).
"""

from __future__ import annotations

from fedstream.server.aggregation.strategies.base import Strategy
from fedstream.server.aggregation.strategies.options import number


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, mu: float | str = 0.01) -> None:
        self.mu = number(self.name, "mu", mu, 0.0)

    def configure_client(self, config: dict[str, float]) -> dict[str, float]:
        return {**config, "proximal_mu": self.mu}
