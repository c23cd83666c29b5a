"""The control server: the responder side of the gateway-to-gateway handshake.

Work is spent in order of what a stranger can make us do, cheapest first:
a source that is no peer's control address is closed before anything is read;
connections are capped per source and in all (the oldest unadmitted one makes
room), and a source's connection rate is limited (connections that bring an
admitted INIT give their token back); the first frame is size- and time-capped
and must be an INIT that passes `InitAdmission` (claimed peer at this source,
signatures, epoch, freshness) before the peer's session, its lock or any key
fetch is touched. Accept errors (EMFILE...) back off instead of spinning.
Refusals go to fixed counters, a rate-limited log and one `control_flood`
alarm; the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from gateway.handshake import DecodeError
from gateway.handshake.codec import decode
from gateway.handshake.messages import Init

from .admission import FloodMonitor, InitAdmission, Refusal, RefusalCounters
from .conntable import BoundedReader, Conn, ConnectionTable, connection_cap
from .framing import FrameError, read_frame
from .ratelimit import RateLimiter
from .ratelog import RateLimitedLog

log = logging.getLogger("qsgw.control")

ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 2.0


class ControlServer:
    def __init__(self, host: str, port: int, max_frame_bytes: int, rate_per_s: float,
                 lookup: Callable[[str], object | None],
                 allowed_sources: Callable[[], set[str]],
                 admission: InitAdmission | None = None, settings: Any = None,
                 on_flood: Callable[[bool, str], None] | None = None) -> None:
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self._limiter = RateLimiter(rate_per_s)
        self._lookup = lookup  # gateway id -> PeerSession (or None)
        self._allowed_sources = allowed_sources
        self._admission = admission
        s = settings
        self.first_frame_timeout_s = getattr(s, "first_frame_timeout_s", 5.0)
        self.max_frames = getattr(s, "max_frames_per_connection", 4)
        self.conns = ConnectionTable(connection_cap(getattr(s, "max_connections", 128)),
                                     getattr(s, "max_connections_per_source", 8),
                                     getattr(s, "max_connections_per_peer", 2))
        self._flood = FloodMonitor(on_flood or (lambda active, detail: None),
                                   threshold=getattr(s, "flood_alarm_refusals", 50))
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused = RefusalCounters()
        self.ratelog = RateLimitedLog(log)
        self.accept_errors = 0

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accept_task = asyncio.create_task(self._accept_loop(), name="control-accept")

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._handlers):
            task.cancel()

    def refusal(self, reason: str, source: str, detail: str = "") -> None:
        """Count, log at a bounded rate, feed the flood alarm (also called by sessions)."""
        key = self.refused.count(reason)
        self.ratelog.warning(key, "control connection from %s refused: %s%s", source, key,
                             f" ({detail})" if detail else "")
        self._flood.refused()

    def tick(self) -> None:
        """Periodic: report suppressed log lines, let the flood alarm clear."""
        self.ratelog.flush()
        self._flood.tick()

    @property
    def flooded(self) -> bool:
        return self._flood.active

    # ------------------------------------------------------------------ accept

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF_MIN_S
        while True:
            if self.conns.full():
                # Shed load before the descriptor limit: stop accepting (the kernel's
                # backlog holds or drops new SYNs) until a handshake ends.
                await self.conns.slot_free.wait()
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                self.accept_errors += 1
                self.ratelog.warning("accept", "control accept failed (%s); retrying in %.2f s",
                                     errno.errorcode.get(exc.errno or 0, str(exc)), backoff)
                await asyncio.sleep(backoff)
                backoff = min(ACCEPT_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = ACCEPT_BACKOFF_MIN_S
            self._admit_socket(conn, addr)

    def _admit_socket(self, conn: socket.socket, addr: Any) -> None:
        source = _normalise(addr[0]) if addr else "?"
        if source not in self._allowed_sources():
            conn.close()
            self.refusal("not_a_peer_address", source)
            return
        if not self._limiter.allow(source, time.monotonic()):
            conn.close()
            self.refusal("rate_limited", source)
            return
        holder: list[asyncio.Task[None]] = []
        entry = self.conns.open(source, lambda: _cancel(holder))
        if isinstance(entry, str):
            conn.close()
            self.refusal(entry, source)
            return
        task = asyncio.create_task(self._serve_socket(conn, source, entry))
        holder.append(task)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve_socket(self, sock: socket.socket, source: str, entry: Conn) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock, limit=self.max_frame_bytes + 8)
            await self._serve(reader, writer, source, entry)
        except asyncio.CancelledError:
            if entry.peer is None:
                self.refusal("evicted", source)
        except OSError:
            pass
        finally:
            self.conns.release(entry)
            if writer is not None:
                writer.close()
            else:
                sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     source: str, entry: Conn) -> None:
        bounded = BoundedReader(reader, self.max_frames,
                                self.max_frames * (self.max_frame_bytes + 4))
        try:
            first = await asyncio.wait_for(
                read_frame(bounded, self.max_frame_bytes, self.first_frame_timeout_s),  # type: ignore[arg-type]
                self.first_frame_timeout_s)
        except (FrameError, TimeoutError) as exc:
            self.refusal("bad_frame", source, str(exc) or "first frame too slow")
            return
        try:
            message = decode(first)  # structure only; the signatures come next
        except DecodeError as exc:
            self.refusal("undecodable", source, str(exc))
            return
        if not isinstance(message, Init):
            self.refusal("not_init", source, type(message).__name__)
            return
        session: Any = self._lookup(message.initiator_id)
        if session is None:
            self.refusal("unknown_peer", source)
            return
        if self._admission is not None:
            refusal: Refusal | None = self._admission.check(message, source, session.peer.identity)
            if refusal is not None:
                self.refusal(refusal.reason, source, refusal.detail)
                return
        if not self.conns.admit(entry, message.initiator_id):
            self.refusal("peer_busy", source, message.initiator_id)
            return
        self._limiter.refund(source)  # an admitted INIT costs its peer no budget
        await session.handle_incoming(first, bounded, writer, self)


def _cancel(holder: list[asyncio.Task[None]]) -> None:
    for task in holder:
        task.cancel()


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve_host(host: str) -> set[str]:
    """Addresses a configured control host may connect from (names resolved once)."""
    try:
        return {_normalise(str(ipaddress.ip_address(host)))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return set()
    return {_normalise(str(info[4][0])) for info in infos}
