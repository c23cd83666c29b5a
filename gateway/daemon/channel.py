"""The handshake's transport: one TCP connection per handshake, and how attempts fail.

`Channel` carries a handshake the control server accepted; `OutgoingChannel` is
the initiator's, opened only once INIT is ready. A failed attempt becomes a
`SessionFailure` with a short stable reason for metrics (`as_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.journal import JournalError, KeyReuseError
from gateway.tunnels.base import TunnelError
from kms_client import KmeKeyNotFound, KmeUnavailable

from .framing import FrameError, read_frame, write_frame

IO_TIMEOUT_S = 10.0


class SessionFailure(Exception):
    """A handshake attempt failed; `reason` is a short stable word for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Channel:
    """One TCP connection carrying one handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame: int) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame

    async def send(self, data: bytes) -> None:
        await write_frame(self.writer, data, IO_TIMEOUT_S)

    async def receive(self) -> bytes:
        return await read_frame(self.reader, self.max_frame, IO_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class OutgoingChannel:
    """The initiator's connection, opened when INIT is ready to go: the QKD keys are
    fetched first, so an attempt that finds no key never touches the peer (whose
    control server would otherwise see a connection close without a frame)."""

    def __init__(self, peer_id: str, host: str, port: int, max_frame: int,
                 source: str | None = None) -> None:
        self.peer_id, self.host, self.port, self.max_frame = peer_id, host, port, max_frame
        self.source = source  # the local address to connect from (an HA pair's VIP)
        self._channel: Channel | None = None

    async def _open(self) -> Channel:
        if self._channel is None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host, self.port,
                        local_addr=None if self.source is None else (self.source, 0)),
                    IO_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise SessionFailure("peer_unreachable", f"control {self.host}:{self.port}: "
                                     f"{exc.__class__.__name__}") from None
            self._channel = Channel(reader, writer, self.max_frame)
        return self._channel

    async def send(self, data: bytes) -> None:
        await (await self._open()).send(data)

    async def receive(self) -> bytes:
        try:
            return await (await self._open()).receive()
        except FrameError as exc:
            if exc.hung_up:
                # The responder hung up instead of answering: its handshake failed
                # on its side (often: no QKD key at its KME), and only it knows why.
                raise SessionFailure(
                    "peer_aborted", f"{self.peer_id} closed the handshake without an "
                    "answer; its log and `qsgw status` say why (e.g. no QKD key at its KME)",
                ) from None
            raise

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def receive_failure(exc: FrameError | SessionFailure, awaiting_done: bool) -> SessionFailure:
    """The failure when the next frame did not come. Awaiting DONE, it says so: the
    responder installs before it sends DONE, so it may hold a key we never installed,
    and the retry's new epoch puts both ends on one key."""
    if awaiting_done:
        how = "the connection closed" if isinstance(exc, SessionFailure) else str(exc)
        return SessionFailure("no_done", f"no DONE from the peer ({how}): the peer may hold "
                              "the new key; retrying with a new epoch")
    if isinstance(exc, SessionFailure):
        return exc
    return SessionFailure("transport", str(exc))


def describe_kms_error(exc: Exception) -> str:
    if isinstance(exc, KmeUnavailable):
        return f"KME unavailable: {exc}"
    if isinstance(exc, KmeKeyNotFound):
        return f"QKD key not found: {exc}"
    return f"{type(exc).__name__}: {exc}"


def as_failure(exc: BaseException, handshake_timeout_s: float) -> SessionFailure:
    if isinstance(exc, SessionFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return SessionFailure("timeout", f"no complete handshake within {handshake_timeout_s:g} s")
    if isinstance(exc, TunnelError):
        return SessionFailure("tunnel", str(exc))
    if isinstance(exc, KeyReuseError):
        return SessionFailure("key_reuse", str(exc))
    if isinstance(exc, JournalError):  # lost, replaced or unwritable: no epoch (fail closed)
        return SessionFailure("journal", str(exc))
    if isinstance(exc, (OSError, FrameError)):
        return SessionFailure("transport", f"{type(exc).__name__}: {exc}")
    return SessionFailure("internal", f"{type(exc).__name__}: {exc}")
