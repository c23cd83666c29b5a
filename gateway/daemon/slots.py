"""InitiationSlots: how many outgoing handshakes run at once, and when none wait for one."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

MAX_CONCURRENT_INITIATIONS = 32


class InitiationSlots:
    """A semaphore over the daemon's outgoing handshakes that knows when its queue drained.

    A hub that starts thousands of sessions keys them in a steady stream instead of
    timing out under its own burst; the queue that makes is the boot. A session keyed
    early in it waits for the queue to drain before it draws its first rekey, so that
    the first rekeys spread over the interval after the boot instead of queueing
    behind the first epochs still waiting (keypolicy.first_rekey_hold).
    """

    def __init__(self, slots: int = MAX_CONCURRENT_INITIATIONS) -> None:
        self._sem = asyncio.Semaphore(slots)
        self._waiting = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def waiting(self) -> int:
        return self._waiting

    async def __aenter__(self) -> None:
        if not self._sem.locked():
            await self._sem.acquire()  # a slot is free: no wait
            return
        self._waiting += 1
        self._drained.clear()
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._drained.set()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._sem.release()

    async def drained(self, timeout_s: float) -> None:
        """Return once no handshake waits for a slot, or after `timeout_s`."""
        if self._drained.is_set() or timeout_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout_s)
