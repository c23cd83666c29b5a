"""The control server: the responder side of the gateway-to-gateway handshake.

Only configured peers get in: a connection from an address that is no peer's
control address is closed before anything is read; each source is rate
limited; frames are size-capped; the first frame must be an INIT naming a
configured peer. Everything refused is counted and logged, and the server goes on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from gateway.handshake import DecodeError
from gateway.handshake.codec import decode
from gateway.handshake.messages import Init

from .framing import FrameError, read_frame
from .ratelimit import RateLimiter

log = logging.getLogger("qsgw.control")

FIRST_FRAME_TIMEOUT_S = 10.0


class ControlServer:
    def __init__(self, host: str, port: int, max_frame_bytes: int, rate_per_s: float,
                 lookup: Callable[[str], object | None],
                 allowed_sources: Callable[[], set[str]]) -> None:
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self._limiter = RateLimiter(rate_per_s)
        self._lookup = lookup  # gateway id -> PeerSession (or None)
        self._allowed_sources = allowed_sources
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.refused: Counter[str] = Counter()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port,
                                                  family=family, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        self._server = None

    def _refuse(self, reason: str, source: str, writer: asyncio.StreamWriter) -> None:
        self.refused[reason] += 1
        log.warning("control connection from %s refused: %s", source, reason)
        writer.close()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_addr = writer.get_extra_info("peername")
        source = _normalise(peer_addr[0]) if peer_addr else "?"
        if source not in self._allowed_sources():
            self._refuse("not_a_peer_address", source, writer)
            return
        if not self._limiter.allow(source, time.monotonic()):
            self._refuse("rate_limited", source, writer)
            return
        try:
            first = await read_frame(reader, self.max_frame_bytes, FIRST_FRAME_TIMEOUT_S)
        except FrameError as exc:
            self._refuse(f"bad_frame ({exc})", source, writer)
            return
        try:
            message = decode(first)  # structure only; signatures are the session's job
        except DecodeError as exc:
            self._refuse(f"undecodable ({exc})", source, writer)
            return
        if not isinstance(message, Init):
            self._refuse(f"first frame is {type(message).__name__}, not INIT", source, writer)
            return
        initiator_id = message.initiator_id
        session = self._lookup(initiator_id)
        if session is None:
            self._refuse("unknown_peer", source, writer)
            return
        await session.handle_incoming(first, reader, writer)  # type: ignore[attr-defined]


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
