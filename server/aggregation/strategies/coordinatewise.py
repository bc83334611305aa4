"""Robust aggregation that needs every update of the round at once, read from the disk spool in slices.

Each window is one slice of one tensor across all N updates ([N, w] values), so server memory is bounded by
the window budget, not by N × model size. The window shrinks as N grows to keep that bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import torch

from fedstream.server.aggregation.strategies.base import RoundUpdates, Strategy

STACK_BUDGET_ELEMENTS = 1 << 22
MIN_WINDOW = 1 << 10


def window_elements(num_updates: int, budget: int = STACK_BUDGET_ELEMENTS) -> int:
    """Slice length so that one [N, w] stack holds at most `budget` values (at least MIN_WINDOW)."""
    return max(MIN_WINDOW, budget // max(num_updates, 1))


def slices(updates: RoundUpdates, budget: int) -> Iterator[tuple[str, int, int, torch.Tensor]]:
    """(tensor name, start, stop, [N, stop − start] values) over the whole model."""
    for name, start, stop in updates.windows(window_elements(len(updates), budget)):
        yield name, start, stop, updates.stack(name, start, stop)


class CoordinateWise(Strategy):
    """Combines the N values of every coordinate independently (median, trimmed mean); unweighted."""

    streaming = False
    stack_budget = STACK_BUDGET_ELEMENTS

    def combine(self, ordered: torch.Tensor) -> torch.Tensor:
        """One value per column of an [N, w] tensor whose columns are sorted ascending."""
        raise NotImplementedError

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        if not len(updates):
            raise ValueError(f"strategy {self.name} got no updates to aggregate")
        out = updates.empty_like_reference()
        for name, start, stop, values in slices(updates, self.stack_budget):
            out[name].view(-1)[start:stop] = self.combine(torch.sort(values, dim=0).values).to(out[name].dtype)
        return out
