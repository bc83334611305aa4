"""Aggregation strategies, chosen by name (`--strategy NAME --strategy-option KEY=VALUE`)."""

from __future__ import annotations

from fedstream.server.strategies.base import RoundUpdates, Strategy
from fedstream.server.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg,)}

__all__ = ["RoundUpdates", "Strategy", "STRATEGIES", "make_strategy"]


def make_strategy(name: str, options: dict[str, str] | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}") from None
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"strategy {name}: {exc}") from None
