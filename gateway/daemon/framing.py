"""Framing of the control channel between gateways: a 4-byte length, then the payload.

The cap is checked before the payload is read, so a peer cannot make us buffer
more than `max_frame_bytes`; every read has a timeout so a silent peer cannot
hold a connection open.
"""

from __future__ import annotations

import asyncio
import struct

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is too large, truncated, or did not arrive in time.
    `hung_up`: the peer closed the connection cleanly where a frame should start."""

    def __init__(self, message: str, hung_up: bool = False) -> None:
        super().__init__(message)
        self.hung_up = hung_up


async def read_frame(reader: asyncio.StreamReader, max_bytes: int, timeout_s: float) -> bytes:
    try:
        header = await asyncio.wait_for(reader.readexactly(_HEADER.size), timeout_s)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"connection closed after {len(exc.partial)} bytes of a frame",
                         hung_up=not exc.partial) from None
    except TimeoutError:
        raise FrameError(f"no complete frame within {timeout_s:g} s") from None
    (length,) = _HEADER.unpack(header)
    if length == 0 or length > max_bytes:
        raise FrameError(f"frame length {length} outside 1..{max_bytes}")
    try:
        return await asyncio.wait_for(reader.readexactly(length), timeout_s)
    except asyncio.IncompleteReadError as exc:
        partial = _HEADER.size + len(exc.partial)
        raise FrameError(f"connection closed after {partial} bytes of a frame") from None
    except TimeoutError:
        raise FrameError(f"no complete frame within {timeout_s:g} s") from None


async def write_frame(writer: asyncio.StreamWriter, payload: bytes, timeout_s: float) -> None:
    writer.write(_HEADER.pack(len(payload)) + payload)
    try:
        await asyncio.wait_for(writer.drain(), timeout_s)
    except TimeoutError:
        raise FrameError(f"peer did not take a frame within {timeout_s:g} s") from None
