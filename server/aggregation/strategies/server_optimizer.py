"""Server optimisers: strategies that turn the averaged delta into a step with their own per-tensor state.

The state (momentum, second moments) is checkpointed with the run through `state_dict`/`load_state_dict`,
so a resumed run continues with the same moments instead of restarting the optimiser.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Mapping

import torch

from fedstream.common.wire.tensors import all_finite
from fedstream.server.aggregation.aggregator import accumulator_dtype, applied
from fedstream.server.aggregation.strategies.base import Strategy


class ServerOptimizer(Strategy):
    """Applies `step(name, delta)` to floating tensors; integer tensors get the rounded mean as in FedAvg."""

    buffer_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.buffers: dict[str, OrderedDict[str, torch.Tensor]] = {b: OrderedDict() for b in self.buffer_names}

    def step(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The change to add to global tensor `name`, given this round's aggregated delta for it."""
        raise NotImplementedError

    def buffer(self, kind: str, name: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Buffer `kind` for tensor `name`, created with `fill` on first use; checks a restored one's shape."""
        store = self.buffers[kind]
        if name not in store:
            store[name] = torch.full(like.shape, fill, dtype=like.dtype)
        elif store[name].shape != like.shape:
            raise ValueError(f"strategy {self.name}: restored {kind} for {name} has shape {list(store[name].shape)}, "
                             f"the model has {list(like.shape)}; start a fresh run directory for this model")
        return store[name]

    def apply(self, global_state: Mapping[str, torch.Tensor], delta: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """One optimiser step; a step that yields NaN or Inf leaves the buffers as they were and raises."""
        saved = {kind: OrderedDict((n, t.clone()) for n, t in store.items()) for kind, store in self.buffers.items()}
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, g in global_state.items():
            d = delta[name]
            if not g.dtype.is_floating_point:
                out[name] = applied(g, d)
                continue
            out[name] = applied(g, self.step(name, d.to(accumulator_dtype(g.dtype))))
            if not all_finite(out[name]):
                self.buffers = saved
                raise ValueError(f"strategy {self.name}: the step for {name} is not finite (aggregated delta norm "
                                 f"{float(d.double().norm()):.3g}); optimiser state kept from the previous round")
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{kind}.{name}": t for kind, store in self.buffers.items() for name, t in store.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        loaded: dict[str, OrderedDict[str, torch.Tensor]] = {b: OrderedDict() for b in self.buffer_names}
        for key, tensor in state.items():
            kind, _, name = key.partition(".")
            if kind not in loaded or not name:
                raise ValueError(f"strategy {self.name} keeps {', '.join(self.buffer_names) or 'no state'}; "
                                 f"the checkpoint holds {key!r} (written by another strategy?)")
            loaded[kind][name] = tensor.clone()
        self.buffers = loaded
