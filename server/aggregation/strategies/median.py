"""Coordinate-wise median (Yin et al. 2018, https://arxiv.org/abs/1803.01498), unweighted.

With an even number of updates the median of a coordinate is the mean of its two middle values (as numpy).
Robust while fewer than half of the updates are Byzantine.
"""

from __future__ import annotations

import torch

from fedstream.server.aggregation.strategies.coordinatewise import CoordinateWise


class Median(CoordinateWise):
    name = "median"

    def combine(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2
