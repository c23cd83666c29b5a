"""The control server's open connections: caps per source, per peer and in all.

A connection is *pending* until its INIT is admitted, then *admitted* (bound to
a peer). Pending connections are cheap to drop, so when a cap is reached the
oldest pending one of that source (or of anyone, for the global cap) is closed
to make room: holding sockets open cannot lock out a peer whose INIT arrives
within milliseconds. Admitted connections are capped per peer; there is no one
to evict among them, since they all carry the peer's valid signature.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

from .framing import FrameError

# Descriptors kept for everything else (journal, audit, KME, MQTT, tunnels, logs).
FD_RESERVE = 64


def connection_cap(configured: int) -> int:
    """The configured cap, lowered to fit under the process's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(4, min(configured, soft - FD_RESERVE))


@dataclass
class Conn:
    ident: int
    source: str
    close: Callable[[], None] = field(repr=False)
    peer: str | None = None  # set when admitted


class ConnectionTable:
    def __init__(self, max_total: int, max_per_source: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.max_per_peer = max_per_peer
        self._conns: dict[int, Conn] = {}  # insertion order = age
        self._ids = itertools.count(1)
        self.evicted = 0
        self.slot_free = asyncio.Event()
        self.slot_free.set()

    def __len__(self) -> int:
        return len(self._conns)

    def full(self) -> bool:
        """No slot, and no pending connection to evict: stop accepting for now."""
        return len(self._conns) >= self.max_total and not any(
            c.peer is None for c in self._conns.values())

    def open(self, source: str, close: Callable[[], None]) -> Conn | str:
        """A new connection from `source`, or the refusal reason (`source_busy`,
        `server_busy`) when the slots hold only admitted connections. May evict
        older pending connections."""
        mine = [c for c in self._conns.values() if c.source == source]
        if len(mine) >= self.max_per_source and not self._evict(mine):
            return "source_busy"
        if len(self._conns) >= self.max_total and not self._evict(list(self._conns.values())):
            return "server_busy"
        conn = Conn(next(self._ids), source, close)
        self._conns[conn.ident] = conn
        if self.full():
            self.slot_free.clear()
        return conn

    def admit(self, conn: Conn, peer: str) -> bool:
        """Bind `conn` to `peer`; False when the peer already has its cap."""
        if sum(1 for c in self._conns.values() if c.peer == peer) >= self.max_per_peer:
            return False
        conn.peer = peer
        return True

    def release(self, conn: Conn) -> None:
        self._conns.pop(conn.ident, None)
        if not self.full():
            self.slot_free.set()

    def _evict(self, candidates: list[Conn]) -> bool:
        for c in candidates:  # oldest first
            if c.peer is None:
                self.release(c)
                self.evicted += 1
                c.close()
                return True
        return False


class BoundedReader:
    """A StreamReader stand-in (for `read_frame`) that ends a connection once it has
    carried `max_frames` frames or `max_bytes` bytes: one admitted connection
    cannot be used to pour frames into the session."""

    def __init__(self, reader: asyncio.StreamReader, max_frames: int, max_bytes: int,
                 frames: int = 0, used: int = 0) -> None:
        self._reader = reader
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._reads = frames * 2  # read_frame reads a header, then a payload
        self.used = used

    @property
    def frames(self) -> int:
        return (self._reads + 1) // 2

    async def readexactly(self, n: int) -> bytes:
        if self._reads % 2 == 0 and self.frames >= self.max_frames:
            raise FrameError(f"connection carried its {self.max_frames} frames; closed")
        if self.used + n > self.max_bytes:
            raise FrameError(f"connection carried its {self.max_bytes} bytes; closed")
        data = await self._reader.readexactly(n)
        self._reads += 1
        self.used += n
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._reader, name)
