"""Who is connected: sessions bound to client ids, expired when a client stops talking."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field


@dataclass
class Session:
    session_id: str
    client_id: str
    device: str
    codecs: list[str]
    num_examples: int
    upload_codec: str
    joined_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    held_version: int = 0
    capabilities: frozenset[str] = frozenset()


class UnknownSession(LookupError):
    pass


class SessionRegistry:
    """Not thread-safe on its own: the coordinator calls it under its lock."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._by_id: dict[str, Session] = {}
        self._by_client: dict[str, Session] = {}

    def open(self, client_id: str, device: str, codecs: list[str], num_examples: int, upload_codec: str,
             capabilities: frozenset[str] = frozenset()) -> tuple[Session, Session | None]:
        """A new session for client_id; returns it and the session it replaced, if any."""
        previous = self._by_client.pop(client_id, None)
        if previous is not None:
            self._by_id.pop(previous.session_id, None)
        session = Session(secrets.token_hex(16), client_id, device, codecs, num_examples, upload_codec,
                          capabilities=capabilities)
        self._by_id[session.session_id] = session
        self._by_client[client_id] = session
        return session, previous

    def touch(self, session_id: str) -> Session:
        session = self._by_id.get(session_id)
        if session is None:
            raise UnknownSession(f"unknown or expired session {session_id[:8]}…; join again")
        session.last_seen = time.monotonic()
        return session

    def get(self, session_id: str) -> Session | None:
        return self._by_id.get(session_id)

    def close(self, session_id: str) -> Session | None:
        session = self._by_id.pop(session_id, None)
        if session is not None:
            self._by_client.pop(session.client_id, None)
        return session

    def expire(self, now: float | None = None) -> list[Session]:
        now = time.monotonic() if now is None else now
        gone = [s for s in self._by_id.values() if now - s.last_seen > self.timeout_s]
        for s in gone:
            self.close(s.session_id)
        return gone

    def client_ids(self) -> list[str]:
        return sorted(self._by_client)

    def by_client(self, client_id: str) -> Session | None:
        return self._by_client.get(client_id)

    def __len__(self) -> int:
        return len(self._by_id)
