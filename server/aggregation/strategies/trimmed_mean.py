"""Coordinate-wise trimmed mean (Yin et al. 2018, https://arxiv.org/abs/1803.01498), unweighted.

For each coordinate the ⌊β·N⌋ largest and ⌊β·N⌋ smallest values are dropped and the rest averaged (as
scipy.stats.trim_mean). Option: `beta` in [0, 0.5) (default 0.2: with 10 clients, 2 dropped at each end).
"""

from __future__ import annotations

import math

import torch

from fedstream.server.aggregation.strategies.coordinatewise import CoordinateWise
from fedstream.server.aggregation.strategies.options import number


class TrimmedMean(CoordinateWise):
    name = "trimmed-mean"

    def __init__(self, beta: float | str = 0.2) -> None:
        self.beta = number(self.name, "beta", beta, 0.0, 0.5, high_open=True)

    def trimmed(self, n: int) -> int:
        """Values dropped at each end; β < 0.5 always leaves at least one."""
        return math.floor(self.beta * n)

    def combine(self, ordered: torch.Tensor) -> torch.Tensor:
        k = self.trimmed(ordered.shape[0])
        return ordered[k : ordered.shape[0] - k].mean(dim=0)
