"""One kept connection to a wireguard-go UAPI socket, shared per socket and event loop.

wireguard-go serves any number of get/set operations on one connection. Opening
and closing one per operation cost a 2,000-peer hub about 4 % of its CPU; a
connection per peer's driver would cost thousands of descriptors. So every client
of a socket sends on one connection, one request at a time (wireguard-go answers
a one-peer set in microseconds, a get of 10,000 peers in tens of milliseconds).

A connection that failed or was cut mid-request (a timeout, a cancel) is dropped,
since a late reply would answer the next request. A kept connection that
wireguard-go closed (a restart) is retried once on a new one: get and set are
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class UapiConnection:
    def __init__(self, path: Path, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.path = path
        self._limit = limit
        self._pair: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self.opened = 0  # connections made so far (the tests read it)

    async def exchange(self, request: bytes) -> bytes:
        """Send one request and return its reply, up to and with the blank line."""
        async with self._lock:
            for retry in (False, True):
                kept = self._pair is not None
                if self._pair is None:
                    self._pair = await asyncio.open_unix_connection(str(self.path),
                                                                    limit=self._limit)
                    self.opened += 1
                reader, writer = self._pair
                try:
                    writer.write(request)
                    await writer.drain()
                    return await reader.readuntil(b"\n\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self._drop()
                    if not kept or retry:
                        raise
                except BaseException:
                    self._drop()
                    raise
            raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._pair is not None:
            with contextlib.suppress(Exception):
                self._pair[1].close()
            self._pair = None


_conns: dict[tuple[Path, int], UapiConnection] = {}


def connection_for(path: Path, limit: int) -> UapiConnection:
    """The one connection (per event loop) to the UAPI socket at `path`."""
    key = (path, id(asyncio.get_running_loop()))
    conn = _conns.get(key)
    if conn is None or conn.loop is not asyncio.get_running_loop():  # an id reused
        if len(_conns) > 4096:  # connections of loops long gone (tests): start afresh
            _conns.clear()
        conn = _conns[key] = UapiConnection(path, limit)
    return conn
