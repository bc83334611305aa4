"""The strategy interface: how a round's updates become the next global model.

A strategy sees a round's updates through `RoundUpdates`: `mean()` is the streaming weighted mean that was
folded while uploads arrived (O(model) memory), and `windows()`/`stack()` read every update's values for one
slice of one tensor from the disk spool, for algorithms that need all updates at once (median, Krum).

Writing one: subclass `Strategy`, set `name`, override `aggregate` (and `streaming = False` if it does not use
the running mean). `apply` turns the aggregated delta into the new global model (server optimisers override it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Iterator, Mapping

import torch

from fedstream.server.aggregation.aggregator import StreamingAggregator, applied
from fedstream.server.intake.spool import SpooledUpdate, UpdateInfo

StateDict = "OrderedDict[str, torch.Tensor]"
WINDOW_ELEMENTS = 1 << 20


class RoundUpdates:
    """The accepted updates of one round (spooled) and, for streaming strategies, their running mean."""

    def __init__(self, reference: Mapping[str, torch.Tensor], updates: list[SpooledUpdate],
                 aggregator: StreamingAggregator | None) -> None:
        self.reference = reference
        self.updates = updates
        self.aggregator = aggregator

    @property
    def infos(self) -> list[UpdateInfo]:
        return [u.info for u in self.updates if u.info is not None]

    def __len__(self) -> int:
        return len(self.updates)

    def mean(self) -> "OrderedDict[str, torch.Tensor]":
        if self.aggregator is None or self.aggregator.count == 0:
            raise ValueError("no update was folded into this round's running mean")
        return self.aggregator.mean()

    def windows(self, max_elements: int = WINDOW_ELEMENTS) -> Iterator[tuple[str, int, int]]:
        """(tensor name, start, stop) element ranges that cover the model in bounded slices."""
        for name, tensor in self.reference.items():
            numel = tensor.numel()
            for start in range(0, max(numel, 1), max_elements):
                yield name, start, min(start + max_elements, numel)

    def stack(self, name: str, start: int, stop: int) -> torch.Tensor:
        """[N, stop − start] float32 (float64 for non-float32 tensors): every update's values for one slice."""
        dtype = torch.float32 if self.reference[name].dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
        out = torch.empty((len(self.updates), stop - start), dtype=dtype)
        for row, update in enumerate(self.updates):
            out[row] = update.element_range(name, start, stop).to(dtype)
        return out

    def empty_like_reference(self) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((n, torch.zeros(t.shape, dtype=torch.float32 if t.dtype.is_floating_point and t.element_size() <= 4 else torch.float64))
                           for n, t in self.reference.items())


class Strategy:
    """FedAvg semantics by default: mean of deltas weighted by example counts, added to the global model."""

    name: ClassVar[str] = "base"
    streaming: ClassVar[bool] = True

    def __init__(self, **options: str) -> None:
        if options:
            raise ValueError(f"strategy {self.name} takes no option(s) {', '.join(sorted(options))}")

    def weight(self, info: UpdateInfo) -> float:
        return float(info.num_examples)

    def scale(self, info: UpdateInfo) -> float:
        """Multiplier on an update before it is folded (clipping uses it); 1 by default."""
        return 1.0

    def begin_round(self, number: int, sampled: int, population: int) -> str | None:
        """Called when `sampled` of `population` connected clients are picked; a returned reason ends the run."""
        return None

    def begin_task(self, client_id: str) -> str | None:
        """Async mode: called before client_id gets a task (each can bring one update); a reason ends the run."""
        return None

    def configure_client(self, config: dict[str, float]) -> dict[str, float]:
        """Training settings sent to clients with each task (FedProx adds its μ here)."""
        return config

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        return updates.mean()

    def apply(self, global_state: Mapping[str, torch.Tensor], delta: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """New global model = global + delta, built in delta's buffers where dtypes allow (no extra copy)."""
        return OrderedDict((name, applied(g, delta[name], reuse_change=True)) for name, g in global_state.items())

    def round_metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint with the run (server optimiser moments, adaptive clip norm, ...).

        The round's checkpoint is written beside the next round and may hold these very tensors: change them
        only in aggregate or apply (which wait for that checkpoint), never in begin_round, weight or scale."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"strategy {self.name} has no state but the checkpoint holds {sorted(state)[:3]}")
