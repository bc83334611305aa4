"""Krum and multi-Krum (Blanchard et al. 2017, https://arxiv.org/abs/1703.02757), unweighted.

Each update's score is the sum of squared L2 distances to its N − f − 2 nearest other updates; Krum keeps
the best-scored update, multi-Krum averages the m best. The N × N distance matrix is accumulated over spool
windows (pass 1), and the kept updates are averaged window by window (pass 2), so memory stays O(model).
Options: `f` (Byzantine updates tolerated, default 0), multi-krum also `m` (updates kept, default N − f).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from fedstream.server.aggregation.strategies.base import RoundUpdates
from fedstream.server.aggregation.strategies.coordinatewise import CoordinateWise, slices
from fedstream.server.aggregation.strategies.options import count

log = logging.getLogger("fedstream.server")


def pairwise_sq_distances(updates: RoundUpdates, budget: int) -> torch.Tensor:
    """[N, N] squared L2 distances between whole updates: ‖a‖² + ‖b‖² − 2a·b per window, in float64."""
    n = len(updates)
    dist = torch.zeros((n, n), dtype=torch.float64)
    for _name, _start, _stop, values in slices(updates, budget):
        x = values.to(torch.float64)
        gram = x @ x.T
        sq = gram.diagonal()
        dist += sq[:, None] + sq[None, :] - 2 * gram
    return dist.clamp_min_(0).fill_diagonal_(0)


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """Per update, the sum of its N − f − 2 smallest distances to others (at least one neighbour)."""
    n = dist.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    neighbours = min(max(n - f - 2, 1), n - 1)
    others = dist.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    return torch.sort(others, dim=1).values[:, :neighbours].sum(dim=1)


class Krum(CoordinateWise):
    name = "krum"

    def __init__(self, f: int | str = 0) -> None:
        self.f = count(self.name, "f", f) or 0
        self.selected: list[str] = []

    def keep(self, n: int) -> int:
        """How many of n updates are averaged."""
        return 1

    def warn_if_weak(self, num_updates: int) -> None:
        """Krum's guarantee needs N > 2f + 2; fewer updates still aggregate, with a warning."""
        if num_updates <= 2 * self.f + 2 and num_updates > 1:
            log.warning("%s with f=%d is only guaranteed robust with more than %d updates; got %d", self.name,
                        self.f, 2 * self.f + 2, num_updates)

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        n = len(updates)
        if not n:
            raise ValueError(f"strategy {self.name} got no updates to aggregate")
        self.warn_if_weak(n)
        scores = krum_scores(pairwise_sq_distances(updates, self.stack_budget), self.f)
        chosen = sorted(torch.sort(scores, stable=True).indices[: self.keep(n)].tolist())
        self.selected = [updates.updates[i].info.client_id if updates.updates[i].info else str(i) for i in chosen]
        log.info("%s kept %d of %d update(s): %s", self.name, len(chosen), n, ", ".join(self.selected))
        kept = RoundUpdates(updates.reference, [updates.updates[i] for i in chosen], None)
        out = kept.empty_like_reference()
        for name, start, stop, values in slices(kept, self.stack_budget):
            out[name].view(-1)[start:stop] = values.mean(dim=0).to(out[name].dtype)
        return out


class MultiKrum(Krum):
    name = "multi-krum"

    def __init__(self, f: int | str = 0, m: int | str | None = None) -> None:
        super().__init__(f)
        self.m = count(self.name, "m", m, low=1)

    def keep(self, n: int) -> int:
        return max(1, min(self.m or n - self.f, n))
