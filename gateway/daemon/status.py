"""The local status socket: one JSON document per connection, read by `qsgw status`.

A unix socket, mode 0660, so only root and the qsgw group can read peer state.
The document holds no key material: epochs, ages, sources, policy state, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class StatusServer:
    def __init__(self, path: Path, provider: StatusProvider) -> None:
        self.path = path
        self._provider = provider
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):  # a symlink or file: never removed or followed
                raise FileSafetyError(f"status socket {self.path} exists and is not a socket: "
                                      "remove it, or set gateway.status_socket elsewhere")
            self.path.unlink()
        old_umask = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        finally:
            os.umask(old_umask)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self._provider() + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
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
