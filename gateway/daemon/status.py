"""The local status socket: one JSON document per connection, read by `qsgw status`.

A unix socket, mode 0660, so only root and the qsgw group can read peer state.
The document holds no key material: epochs, ages, sources, policy state, errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import socket
import stat
import threading
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
        self._sender: _SenderLoop | None = None
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
        self._sender = _SenderLoop()
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
        handed_over = False
        try:
            document = await self._provider() + b"\n"
            assert self._sender is not None
            sent = self._sender.send(conn, document)
            handed_over = True  # the sender closes it, also when this is cancelled
            await asyncio.wrap_future(sent)
        except (OSError, TimeoutError):
            pass
        finally:
            if not handed_over:
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
        if self._sender is not None:
            await self._sender.close()
            self._sender = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _SenderLoop:
    """A second event loop, in its own thread, that writes the documents out.

    10,000 peers are ~8 MB of JSON and a socket buffer takes ~200 KB: written by the
    daemon's loop, each refill waited a whole turn of a busy loop (seconds in all).
    This loop has nothing else to do, and each client still has its own deadline, so
    one that stops reading holds up no other.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="status-send",
                                        daemon=True)
        self._thread.start()

    def send(self, conn: socket.socket, document: bytes) -> concurrent.futures.Future[None]:
        """Write `document` to `conn`, then close it (cancelling the future closes it too)."""
        return asyncio.run_coroutine_threadsafe(_send_and_close(conn, document), self._loop)

    async def close(self) -> None:
        """Cancel the sends in progress (each closes its connection), then end the thread."""
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()


async def _send_and_close(conn: socket.socket, document: bytes) -> None:
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(conn, document),
                               SEND_TIMEOUT_S)
    except (OSError, TimeoutError):
        pass  # the client went away or stopped reading
    finally:
        conn.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


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
