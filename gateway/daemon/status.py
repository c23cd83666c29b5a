"""The local status socket: one JSON document per connection, read by `qsgw status`.

A unix socket, mode 0660, so only root and the qsgw group can read peer state.
The document holds no key material: epochs, ages, sources, policy state, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.fsguard import FileSafetyError

# The document, encoded: built by the daemon a chunk of peers at a time.
StatusProvider = Callable[[], Awaitable[bytes]]
SEND_TIMEOUT_S = 5.0
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0


class StatusServer:
    """Serves the document; keeps one spare descriptor so that it answers at the limit.

    A flood that takes every descriptor (EMFILE on accept) is when an operator most needs
    `qsgw status`: the spare is closed to accept the status client, and taken again when
    that client is served (the classic reserve-descriptor trick).
    """

    def __init__(self, path: Path, provider: StatusProvider) -> None:
        self.path = path
        self._provider = provider
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._spare: int | None = None
        self.accept_errors = 0
        self.spare_used = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):  # a symlink or file: never removed or followed
                raise FileSafetyError(f"status socket {self.path} exists and is not a socket: "
                                      "remove it, or set gateway.status_socket elsewhere")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        sock.listen(32)
        sock.setblocking(False)
        self._sock = sock
        self._take_spare()
        self._accept_task = asyncio.create_task(self._accept_loop())

    def _take_spare(self) -> None:
        if self._spare is None:
            with contextlib.suppress(OSError):  # at the limit: taken after the next client
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF_MIN_S
        while True:
            try:
                # sock_accept tries accept() at once, so the descriptor freed just
                # before is ours: nothing else runs on the loop in between.
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                self.accept_errors += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._spare is not None:
                    os.close(self._spare)
                    self._spare = None
                    self.spare_used += 1
                    continue
                await asyncio.sleep(backoff)
                backoff = min(ACCEPT_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = ACCEPT_BACKOFF_MIN_S
            task = asyncio.create_task(self._serve(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            document = await self._provider() + b"\n"
            await asyncio.wait_for(loop.sock_sendall(conn, document), SEND_TIMEOUT_S)
        except (OSError, TimeoutError):
            pass
        finally:
            conn.close()
            self._take_spare()

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        # Their `finally` takes the spare again: let it run before the spare is closed.
        await asyncio.gather(*clients, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def read_status_bytes(path: Path, timeout_s: float = 5.0) -> bytes:
    """The daemon's document as it sent it (one line of JSON, keys sorted)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def read_status(path: Path, timeout_s: float = 5.0) -> dict[str, Any]:
    """Synchronous client (CLI, demo, tests)."""
    result: dict[str, Any] = json.loads(read_status_bytes(path, timeout_s))
    return result
