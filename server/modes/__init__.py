"""Round modes, chosen by name (`--mode NAME`): synchronous, buffered asynchronous, over-selection, secure aggregation.

Adding a mode is one module here (a RoundMode subclass, see server/core/round_mode.py and
docs/architecture.md) and one line in MODES.
"""

from __future__ import annotations

from typing import Callable

from fedstream.server.core.round_mode import RoundMode
from fedstream.server.modes.buffered_async import AsyncSettings, BufferedAsync
from fedstream.server.modes.over_selection import OverSelection
from fedstream.server.modes.secure_aggregation import SecAggSettings, SecureAggregation
from fedstream.server.modes.relay import RelayRounds
from fedstream.server.modes.sync_rounds import SyncRounds

MODES: dict[str, Callable[..., RoundMode]] = {
    "sync": SyncRounds,
    "async": BufferedAsync,
    "over-selection": OverSelection,
    "secure-aggregation": SecureAggregation,
    "relay": RelayRounds,
}


def make_mode(name: str, **settings: object) -> RoundMode:
    """A mode by name, built with its own settings (async: an AsyncSettings, secure-aggregation: a SecAggSettings,
    as `settings`)."""
    try:
        factory = MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}; available: {', '.join(MODES)}") from None
    return factory(**settings)


__all__ = ["AsyncSettings", "BufferedAsync", "MODES", "RelayRounds", "RoundMode", "SecAggSettings", "SecureAggregation",
           "SyncRounds", "make_mode"]
