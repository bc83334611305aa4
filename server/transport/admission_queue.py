"""Waiting for a transfer slot (--max-transfers) on the event loop, in order, without one timer per waiter.

Waiters queue; a release wakes the next one, and while anyone waits one timer ticks so that the first waiter
re-checks the stall rule (a holder that moved no chunk for a second stops counting). Thousands of waiting
uploads therefore cost a future each, not a wake-up each every few milliseconds. A transfer of at most one chunk
does not queue: the slots bound the buffers of large transfers, and one chunk is what any call may hold anyway;
queueing it would only make thousands of tiny transfers wait on each other's network round trips.
"""

from __future__ import annotations

import asyncio
from collections import deque

from fedstream.server.core.admission import Transfer, TransferSlots

TICK_SECONDS = 0.25


class Unqueued(Transfer):
    """What a transfer of at most one chunk holds instead of a slot: its progress counts for nothing."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.0)

    def progress(self) -> None:
        pass


UNQUEUED = Unqueued()


class AdmissionQueue:
    def __init__(self, slots: TransferSlots, small_bytes: int = 0, tick: float = TICK_SECONDS) -> None:
        self.slots = slots
        self.small_bytes = small_bytes
        self.tick = tick
        self._waiters: deque[asyncio.Future] = deque()
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, nbytes: int | None = None) -> Transfer:
        """A slot, or UNQUEUED for a transfer of at most small_bytes (it needs none)."""
        if nbytes is not None and nbytes <= self.small_bytes:
            return UNQUEUED
        transfer = self.slots.try_acquire()
        if transfer is not None:
            return transfer
        loop = asyncio.get_running_loop()
        while True:
            turn = loop.create_future()
            self._waiters.append(turn)
            self._arm(loop)
            try:
                await turn
            finally:
                if not turn.done() or turn.cancelled():
                    self._discard(turn)
            transfer = self.slots.try_acquire(waited=True)
            if transfer is not None:
                return transfer

    def release(self, transfer: Transfer) -> None:
        if transfer is UNQUEUED:
            return
        self.slots.release(transfer)
        self._wake_one()

    def _discard(self, turn: asyncio.Future) -> None:
        try:
            self._waiters.remove(turn)
        except ValueError:
            pass

    def _wake_one(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._waiters:
            self._wake_one()
            self._arm(loop)
