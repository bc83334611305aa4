"""Streaming weighted averaging: updates fold into one running sum, so memory is O(model), not O(clients).

`StreamingAggregator` is what the server uses; `federated_average` is the same computation over in-memory
state dicts for library users and tests.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Mapping, Sequence

import torch

from fedstream.server.intake.inspection import square_sum
from fedstream.server.intake.spool import SpooledUpdate


SUM_LIMIT = 1e37  # below float32's 3.4e38, with room for rounding


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 sums for float32 and narrower floats; float64 for float64 and integer tensors."""
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    return torch.float64


class NonFiniteUpdateError(ValueError):
    """An update that carries NaN or Inf."""


def inspect_update(update: SpooledUpdate) -> float:
    """Squared L2 norm of a spooled update's floating tensors; raises NonFiniteUpdateError on NaN or Inf.

    Tensors the spool writer already inspected while they streamed are not read again.
    """
    seen = update.inspection
    if seen is not None and seen.nonfinite is not None:
        raise NonFiniteUpdateError(
            f"tensor {seen.nonfinite.name} holds NaN or Inf (at or after element {seen.nonfinite.element})")
    total = seen.sq_norm if seen is not None else 0.0
    rest = {item.name for item in update.layout if item.dtype.is_floating_point
            and (seen is None or item.name not in seen.covered)}
    if not rest:
        return total
    for item, start, values in update.pieces(only=rest):
        sq = square_sum(values)
        if not math.isfinite(sq):
            raise NonFiniteUpdateError(f"tensor {item.name} holds NaN or Inf (at or after element {start})")
        total += sq
    return total


class StreamingAggregator:
    """Running sum of weight × scale × delta, and the sum of weights. Thread-safe; folds one update at a time.

    Float32 sums depend on the order of the folds, and arrival order varies from run to run; training then
    amplifies that last-bit difference. Given `order` (the round's client ids), updates fold in that order
    instead: one that arrives early waits, spooled on disk, until those before it have folded, and `mean`
    folds whatever still waits. Runs with the same seeds are then bit-for-bit identical, at the cost of
    folds that move to the end of the round.
    """

    def __init__(self, reference: Mapping[str, torch.Tensor], order: Sequence[str] | None = None) -> None:
        self._shapes = [(name, t.shape, accumulator_dtype(t.dtype)) for name, t in reference.items()]
        self._sums: OrderedDict[str, torch.Tensor] | None = None
        self.weight_sum = 0.0
        self.count = 0
        self._lock = threading.Lock()
        self._order = {key: rank for rank, key in enumerate(order)} if order is not None else None
        self._waiting: dict[int, tuple[SpooledUpdate, float, float]] = {}
        self._next = 0
        self.magnitude = 0.0

    def room_for(self, magnitude: float) -> bool:
        """Reserves room for an update of weighted L2 norm `magnitude` (a bound on each of its weighted elements);
        False, reserving nothing, when the running sum could then leave float32's range."""
        with self._lock:
            if not math.isfinite(magnitude) or self.magnitude + magnitude > SUM_LIMIT:
                return False
            self.magnitude += magnitude
            return True

    @property
    def sums(self) -> "OrderedDict[str, torch.Tensor]":
        """The running sums, zero-filled at first use: by the first fold, not at the start of the round, where
        filling a model's worth of fresh pages would delay every client's task."""
        if self._sums is None:
            self._sums = OrderedDict((name, torch.zeros(shape, dtype=dtype)) for name, shape, dtype in self._shapes)
        return self._sums

    def add(self, update: SpooledUpdate, weight: float, scale: float = 1.0, key: str | None = None) -> None:
        """Folds a spooled update slice by slice (never the whole update in memory); with an order, key names
        the update's place in it and the fold may wait for the updates before it."""
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"update weight must be a finite non-negative number, got {weight}")
        if self._order is None:
            with self._lock:
                self._fold(update, weight, scale)
                self.count += 1
            return
        if key not in self._order:
            raise ValueError(f"update {key!r} has no place in this aggregator's order")
        with self._lock:
            rank = self._order[key]
            if rank < self._next or rank in self._waiting:
                raise ValueError(f"update {key!r} was already added")
            self._waiting[rank] = (update, weight, scale)
            self.count += 1
            while self._next in self._waiting:
                self._fold(*self._waiting.pop(self._next))
                self._next += 1

    def _fold(self, update: SpooledUpdate, weight: float, scale: float) -> None:
        for item, start, values in update.pieces():
            flat = self.sums[item.name].view(-1)
            flat[start : start + values.numel()].add_(values.to(flat.dtype), alpha=weight * scale)
        self.weight_sum += weight  # in fold order too: a float sum of fractional weights depends on it

    def _fold_waiting(self) -> None:
        """Folds, in order, the updates still waiting for ones that never came."""
        for rank in sorted(self._waiting):
            self._fold(*self._waiting.pop(rank))
        self._next = len(self._order or ())

    def add_state(self, delta: Mapping[str, torch.Tensor], weight: float, scale: float = 1.0) -> None:
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"update weight must be a finite non-negative number, got {weight}")
        with self._lock:
            for name, acc in self.sums.items():
                acc.add_(delta[name].detach().to(acc.dtype), alpha=weight * scale)
            self.weight_sum += weight
            self.count += 1

    def mean(self) -> "OrderedDict[str, torch.Tensor]":
        """The weighted mean, in the accumulator dtype (the sums are reused, not copied)."""
        with self._lock:
            self._fold_waiting()
            if self.weight_sum <= 0:
                raise ValueError("no update with positive weight was aggregated")
            for acc in self.sums.values():
                acc.div_(self.weight_sum)
            self.weight_sum = 1.0
            return self.sums


def federated_average(
    updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> "OrderedDict[str, torch.Tensor]":
    """FedAvg: Σ wᵢ·updateᵢ / Σ wᵢ over state dicts (works on models or deltas), each tensor in its own dtype."""
    if not updates:
        raise ValueError("federated_average needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"got {len(updates)} updates but {len(weights)} weights")
    agg = StreamingAggregator(updates[0])
    for update, weight in zip(updates, weights):
        missing = set(agg.sums) ^ set(update)
        if missing:
            raise ValueError(f"updates disagree on tensor names: {sorted(missing)[:3]}")
        agg.add_state(update, float(weight))
    mean = agg.mean()
    return OrderedDict((name, mean[name].to(updates[0][name].dtype)) for name in mean)


def applied(g: torch.Tensor, change: torch.Tensor, reuse_change: bool = False) -> torch.Tensor:
    """g + change, in g's dtype: floats added in the wider dtype, integer and boolean tensors rounded (the one
    rule for every strategy). reuse_change: the sum may be built in change's own buffer (no copy)."""
    if not g.dtype.is_floating_point:
        return g + torch.round(change).to(g.dtype)
    if reuse_change and change.dtype == g.dtype:
        return change.add_(g)
    return (g.to(change.dtype) + change).to(g.dtype)
