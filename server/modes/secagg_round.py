"""One secure-aggregation attempt's bookkeeping: the clients' numbers, the open phase, who answered, who dropped.

The protocol state itself (keys, boxes, the modular accumulator, the shares) lives in the phase-1
`SecAggServer`, guarded by `lock`; this record is guarded by the core's lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from fedstream.common.secagg.server_protocol import SecAggServer


@dataclass
class SecAggRound:
    number: int
    attempt: int
    base_version: int
    selected: list[str]
    protocol: SecAggServer
    started: float = field(default_factory=time.monotonic)
    phase: str = ""
    deadline: float = 0.0
    tasks: dict[str, bytes] = field(default_factory=dict)  # this phase's payload for each live client
    answered: set[str] = field(default_factory=set)
    handed: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    uploading: dict[str, str] = field(default_factory=dict)
    upload_ids: dict[str, str] = field(default_factory=dict)
    folding: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    exchange_bytes: int = 0
    unmask_seconds: float = 0.0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.index_of = {client: i for i, client in enumerate(self.selected, start=1)}
        self.client_at = {i: client for client, i in self.index_of.items()}

    def open_phase(self, phase: str, tasks: dict[int, bytes], deadline: float) -> None:
        self.phase = phase
        self.tasks = {self.client_at[i]: payload for i, payload in tasks.items() if self.client_at[i] not in self.dropped}
        self.answered = set()
        self.handed = set()
        self.deadline = deadline

    def outstanding(self) -> list[str]:
        return [c for c in self.tasks if c not in self.answered and c not in self.dropped]

    def phase_done(self) -> bool:
        return not self.outstanding() and not self.folding

    def drop(self, client_id: str, reason: str) -> None:
        if client_id in self.index_of and client_id not in self.dropped:
            self.dropped[client_id] = f"{self.phase}: {reason}"
            self.uploading.pop(client_id, None)

    def names(self, indices: list[int]) -> str:
        """Client ids for the protocol's client numbers, for log lines."""
        return ", ".join(self.client_at.get(i, f"#{i}") for i in sorted(indices)) or "none"
