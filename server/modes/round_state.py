"""One synchronous round's bookkeeping: who was asked, who delivered, who was dropped and why."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedstream.server.aggregation.aggregator import StreamingAggregator
from fedstream.server.intake.spool import SpooledUpdate


@dataclass
class RoundState:
    number: int
    attempt: int
    base_version: int
    selected: list[str]
    deadline: float
    aggregator: StreamingAggregator | None
    started: float = field(default_factory=time.monotonic)
    assigned: set[str] = field(default_factory=set)
    uploading: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, SpooledUpdate] = field(default_factory=dict)
    upload_ids: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    folding: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    closed: bool = False
    chosen: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.chosen = frozenset(self.selected)

    def is_selected(self, client_id: str) -> bool:
        return client_id in self.chosen

    def outstanding(self) -> list[str]:
        return [c for c in self.selected if c not in self.accepted and c not in self.dropped]

    def complete(self) -> bool:
        """Every sampled client delivered or was dropped (accepted and dropped never share a client): O(1)."""
        return len(self.accepted) + len(self.dropped) >= len(self.chosen)

    def rejoined(self, client_id: str) -> None:
        """A selected client came back with a new session before delivering: it gets the round's task again."""
        if client_id in self.chosen and client_id not in self.accepted and client_id not in self.uploading:
            self.assigned.discard(client_id)
            self.dropped.pop(client_id, None)

    def drop(self, client_id: str, reason: str) -> None:
        if client_id in self.chosen and client_id not in self.accepted:
            self.dropped[client_id] = reason
            self.uploading.pop(client_id, None)
