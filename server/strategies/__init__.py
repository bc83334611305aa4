"""Aggregation strategies, chosen by name (`--strategy NAME --strategy-option KEY=VALUE`)."""

from __future__ import annotations

import inspect

from fedstream.server.strategies.base import RoundUpdates, Strategy
from fedstream.server.strategies.fedavg import FedAvg
from fedstream.server.strategies.fedavgm import FedAvgM
from fedstream.server.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedstream.server.strategies.fedprox import FedProx
from fedstream.server.strategies.krum import Krum, MultiKrum
from fedstream.server.strategies.median import Median
from fedstream.server.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvg, FedAvgM, FedProx, FedAdagrad, FedAdam, FedYogi, Median, TrimmedMean, Krum, MultiKrum)}

__all__ = ["RoundUpdates", "Strategy", "STRATEGIES", "make_strategy"]


def make_strategy(name: str, options: dict[str, str] | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}") from None
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        known = [p for p in params if p != "self"]
        unknown = sorted(set(options or {}) - set(known))
        if unknown:
            raise ValueError(f"strategy {name} has no option {', '.join(map(repr, unknown))}; "
                             f"its options are: {', '.join(known) or 'none'}")
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"strategy {name}: {exc}") from None
