"""Admission of model transfers: at most `limit` downloads and uploads stream at once; the others wait.

Every stream that moves data holds gRPC buffers (its flow-control window and the message being handed over,
a few MiB), so with all of a round's clients transferring at once the server's memory would grow with the
number of clients. Waiting transfers hold nothing beyond their call. A holder that moves no chunk for
`stall_seconds` (1 s: slower than about 1 MiB/s, or stalled) stops counting against the limit: it is waiting on
its network, not on this server's CPU, so it keeps streaming and another transfer starts beside it. One slow or
stalled client therefore cannot hold the others back, and clients on slow links still transfer in parallel.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

DEFAULT_STALL_SECONDS = 1.0


def default_limit() -> int:
    """One transfer per CPU this process may run on (at least 2).

    Streams cost CPU (copies, checksums, spooling) and a few MiB of buffers each: on the 2-core benchmark
    machine, 16 clients' rounds took 2.0 s with 2 streams at a time, 2.2 s with 4, 2.5 s with 8 and 2.6 s
    unbounded, with server peaks of 520, 528, 560 and 622 MB (benchmarks/RESULTS.md). Streams over slow links
    stop counting (see DEFAULT_STALL_SECONDS), so this limit binds only transfers that keep the CPU busy.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(2, cpus)


DEFAULT_LIMIT = default_limit()


class Transfer:
    """One admitted transfer; call progress() whenever it moves a chunk."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.last_progress = clock()  # admitted now
        self.counted = True

    def progress(self) -> None:
        self.last_progress = self._clock()


class TransferSlots:
    """A bounded set of active transfers (limit 0: unbounded)."""

    def __init__(self, limit: int = DEFAULT_LIMIT, stall_seconds: float = DEFAULT_STALL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 0:
            raise ValueError(f"the transfer limit must be 0 (none) or positive, got {limit}")
        self.limit = limit
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._active: list[Transfer] = []
        self._cond = threading.Condition()
        self.waits = 0

    @property
    def active(self) -> int:
        with self._cond:
            return sum(t.counted for t in self._active)

    def _room(self) -> bool:
        counted = [t for t in self._active if t.counted]
        if len(counted) < self.limit:
            return True
        now = self._clock()
        stalled = [t for t in counted if now - t.last_progress > self.stall_seconds]
        if stalled:
            stalled[0].counted = False  # its slot goes to this waiter
            return True
        return False

    def acquire(self, cancelled: Callable[[], bool] = lambda: False) -> Transfer | None:
        """Waits for a slot; None when cancelled() turned true while waiting."""
        with self._cond:
            if self.limit:
                waited = False
                while not self._room():
                    if cancelled():
                        return None
                    waited = True
                    self._cond.wait(timeout=min(0.5, self.stall_seconds / 4))
                self.waits += waited
            transfer = Transfer(self._clock)
            self._active.append(transfer)
        return transfer

    def try_acquire(self, waited: bool = False) -> Transfer | None:
        """A slot now, or None when all are taken (for callers that wait on an event loop, not a thread);
        `waited`: the caller already tried and waited (counted in `waits` once it gets its slot)."""
        with self._cond:
            if self.limit and not self._room():
                return None
            self.waits += waited
            transfer = Transfer(self._clock)
            self._active.append(transfer)
        return transfer

    def release(self, transfer: Transfer) -> None:
        with self._cond:
            if transfer in self._active:
                self._active.remove(transfer)
            self._cond.notify_all()

    @contextmanager
    def slot(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Transfer | None]:
        transfer = self.acquire(cancelled)
        try:
            yield transfer
        finally:
            if transfer is not None:
                self.release(transfer)
