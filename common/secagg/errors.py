"""The two ways a secure-aggregation phase can go wrong, so the transport can map them to statuses."""

from __future__ import annotations


class SecAggError(ValueError):
    """A message or parameter was refused; the round itself is not corrupted (INVALID_ARGUMENT)."""


class SecAggAbort(SecAggError):
    """A client refuses to go on with this round (the server misbehaved or too few neighbours are live)."""


class RoundFailed(RuntimeError):
    """The round cannot complete (too few live clients or neighbours); the server retries it as a new attempt."""

    def __init__(self, phase: str, clients: list[int], reason: str) -> None:
        self.phase = phase
        self.clients = sorted(clients)
        super().__init__(f"secure aggregation failed in phase {phase}: {reason} (clients {self.clients})")
