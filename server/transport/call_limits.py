"""Bounds on what a caller can hold before it has proven who it is, and on how long any call may hold it.

An upload must send its header within `header_seconds`; until then it counts as an unauthenticated call, of
which each peer host may hold `per_host` and everyone together `total`. A session may hold at most
`polls_per_session` long polls at once. A download must move each chunk within `chunk_seconds` (a reader
slower than chunk_bytes / chunk_seconds, or one that stopped reading, is dropped). docs/security.md lists them.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from fedstream.server.core import errors


@dataclass
class CallLimits:
    header_seconds: float = 10.0
    per_host: int = 16
    total: int = 256
    polls_per_session: int = 4
    chunk_seconds: float = 30.0
    _pending: Counter = field(default_factory=Counter)
    _polls: Counter = field(default_factory=Counter)

    @contextmanager
    def unauthenticated(self, host: str) -> Iterator[None]:
        """Holds one unauthenticated-call place for host; RESOURCE_EXHAUSTED when host or everyone is at the limit."""
        if self._pending[host] >= self.per_host or sum(self._pending.values()) >= self.total:
            raise errors.exhausted(f"too many calls from {host} that have not identified themselves (at most "
                                   f"{self.per_host} per host and {self.total} in all); retry later")
        self._pending[host] += 1
        try:
            yield
        finally:
            self._pending[host] -= 1
            if not self._pending[host]:
                del self._pending[host]

    @contextmanager
    def long_poll(self, session_id: str) -> Iterator[None]:
        if self._polls[session_id] >= self.polls_per_session:
            raise errors.exhausted(f"session {session_id[:8]}… already holds {self.polls_per_session} task polls; "
                                   "wait for one to return")
        self._polls[session_id] += 1
        try:
            yield
        finally:
            self._polls[session_id] -= 1
            if not self._polls[session_id]:
                del self._polls[session_id]
