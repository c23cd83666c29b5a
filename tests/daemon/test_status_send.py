"""The status socket writes large documents off the daemon's loop: a client that stops
reading is cut at its deadline and holds up no other client, and stop() leaves no
descriptor behind."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from gateway.daemon import status
from gateway.daemon.status import StatusServer, read_status_bytes

# About what 10,000 peers make: far more than a unix socket's buffer takes at once.
DOCUMENT = b'{"peers":[' + b",".join(b'{"peer":"br%05d","state":"ok"}' % i
                                     for i in range(250_000)) + b"]}"


async def _document() -> bytes:
    return DOCUMENT


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _stalled_client(path: Path) -> socket.socket:
    """Connects and never reads: the server's send fills the buffers and waits."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(str(path))
    return client


async def test_a_stalled_client_holds_up_no_other_and_is_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "SEND_TIMEOUT_S", 1.0)
    path = tmp_path / "status.sock"
    server = StatusServer(path, _document)
    await server.start()
    stalled = [_stalled_client(path) for _ in range(4)]  # more than one sender thread
    try:
        await asyncio.sleep(0.2)  # their sends start and block
        # Read in a thread: the server's loop is this one.
        got = await asyncio.to_thread(read_status_bytes, path, 10.0)
        assert got == DOCUMENT + b"\n"
        # Past the deadline the stalled ones are closed: what is left is cut short.
        await asyncio.sleep(1.5)
        for client in stalled:
            client.settimeout(5)
            received = 0
            while chunk := client.recv(1 << 20):
                received += len(chunk)
            assert 0 < received < len(DOCUMENT)
    finally:
        for client in stalled:
            client.close()
        await server.stop()


async def test_stop_with_a_send_in_progress_closes_everything(tmp_path: Path) -> None:
    before = _open_fds()
    path = tmp_path / "status.sock"
    server = StatusServer(path, _document)
    await server.start()
    stalled = _stalled_client(path)
    try:
        await asyncio.sleep(0.2)
        await server.stop()  # well before SEND_TIMEOUT_S
        stalled.settimeout(5)
        while stalled.recv(1 << 20):  # the server's end is closed: EOF, not a hang
            pass
    finally:
        stalled.close()
    assert _open_fds() == before
    assert not path.exists()
