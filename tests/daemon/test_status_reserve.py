"""The status socket answers when every other descriptor is taken (its spare descriptor),
again and again, and the spare is held again after each answer."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.daemon.status import StatusServer


async def _document() -> bytes:
    return b'{"gateway":"gw-test"}'


@contextlib.contextmanager
def _every_descriptor_taken() -> Iterator[list[int]]:
    """Lower the soft limit a little above what is open, then open /dev/null until EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield held
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _ask(loop: asyncio.AbstractEventLoop, client: socket.socket, path: Path) -> bytes:
    await loop.sock_connect(client, str(path))
    chunks = []
    while chunk := await asyncio.wait_for(loop.sock_recv(client, 4096), 5):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_the_status_socket_answers_at_the_descriptor_limit(tmp_path: Path) -> None:
    path = tmp_path / "status.sock"
    server = StatusServer(path, _document)
    await server.start()
    loop = asyncio.get_running_loop()
    # The clients' sockets are made first: at the limit no new one could be.
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for c in clients:
        c.setblocking(False)
    try:
        with _every_descriptor_taken() as held:
            for round_, client in enumerate(clients, 1):
                with pytest.raises(OSError):
                    os.open(os.devnull, os.O_RDONLY)  # truly at the limit
                assert await _ask(loop, client, path) == b'{"gateway":"gw-test"}\n'
                assert server.spare_used == round_  # answered through the spare
                assert server._spare is not None  # and held again at once
                client.close()
                held.append(os.open(os.devnull, os.O_RDONLY))  # the client's, taken
    finally:
        for c in clients:
            c.close()
        await server.stop()
    assert not path.exists() and server._spare is None  # its descriptors closed
