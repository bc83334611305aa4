"""Aggregation strategies, chosen by name (`--strategy NAME --strategy-option KEY=VALUE`) or import path."""

from __future__ import annotations

import importlib
import inspect

from fedstream.server.aggregation.strategies.base import RoundUpdates, Strategy
from fedstream.server.aggregation.strategies.fedavg import FedAvg
from fedstream.server.aggregation.strategies.fedavgm import FedAvgM
from fedstream.server.aggregation.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedstream.server.aggregation.strategies.fedprox import FedProx
from fedstream.server.aggregation.strategies.krum import Krum, MultiKrum
from fedstream.server.aggregation.strategies.median import Median
from fedstream.server.aggregation.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvg, FedAvgM, FedProx, FedAdagrad, FedAdam, FedYogi, Median, TrimmedMean, Krum, MultiKrum)}

__all__ = ["RoundUpdates", "Strategy", "STRATEGIES", "make_strategy"]


def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy by name, or a user's `package.module:ClassName` (a Strategy subclass)."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if ":" not in name:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}, "
                         "or package.module:ClassName for your own")
    module_name, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load strategy {name!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"{name} is not a subclass of fedstream.server.aggregation.strategies.Strategy")
    return cls


def make_strategy(name: str, options: dict[str, str] | None = None) -> Strategy:
    cls = strategy_class(name)
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
