"""The initiator's control connection: opened only when INIT goes, and a responder
that hangs up instead of answering is reported as such (real loopback sockets)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.daemon.channel import OutgoingChannel, SessionFailure, receive_failure
from gateway.daemon.framing import FrameError


async def _server(behaviour: str) -> tuple[asyncio.Server, int, list[bytes]]:
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(4096))
        if behaviour == "half-frame":
            writer.write(b"\x00\x00\x00\x10abc")  # 16 announced, 3 sent
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], got


async def test_nothing_connects_until_a_frame_is_sent() -> None:
    server, port, got = await _server("hang-up")
    async with server:
        channel = OutgoingChannel("gw-b", "127.0.0.1", port, 65536)
        await channel.close()  # an attempt that ended before INIT (no QKD key)
        await asyncio.sleep(0.05)
        assert got == []


async def test_a_responder_hanging_up_is_named_not_a_framing_error() -> None:
    server, port, _ = await _server("hang-up")
    async with server:
        channel = OutgoingChannel("gw-b", "127.0.0.1", port, 65536)
        await channel.send(b"INIT")
        with pytest.raises(SessionFailure) as err:
            await channel.receive()
        await channel.close()
    assert err.value.reason == "peer_aborted"
    assert "gw-b closed the handshake without an answer" in err.value.detail


async def test_a_truncated_answer_stays_a_framing_error() -> None:
    server, port, _ = await _server("half-frame")
    async with server:
        channel = OutgoingChannel("gw-b", "127.0.0.1", port, 65536)
        await channel.send(b"INIT")
        with pytest.raises(FrameError, match="after 7 bytes"):
            await channel.receive()
        await channel.close()


async def test_an_unreachable_peer_is_reported_when_init_goes() -> None:
    server, port, _ = await _server("hang-up")
    server.close()
    await server.wait_closed()
    channel = OutgoingChannel("gw-b", "127.0.0.1", port, 65536)
    with pytest.raises(SessionFailure) as err:
        await channel.send(b"INIT")
    assert err.value.reason == "peer_unreachable"


def test_a_hang_up_while_awaiting_done_names_the_lost_done() -> None:
    hung_up = SessionFailure("peer_aborted", "gw-b closed the handshake without an answer")
    lost = receive_failure(hung_up, awaiting_done=True)
    assert lost.reason == "no_done"
    assert "no DONE from the peer" in lost.detail and "new epoch" in lost.detail
    assert "KME" not in lost.detail  # not the peer_aborted guess: the peer did answer
    assert receive_failure(hung_up, awaiting_done=False) is hung_up
    late = receive_failure(FrameError("no complete frame within 10 s"), awaiting_done=True)
    assert late.reason == "no_done" and "no complete frame within 10 s" in late.detail
    assert receive_failure(FrameError("x"), awaiting_done=False).reason == "transport"
