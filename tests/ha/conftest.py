"""A real PostgreSQL server for the HA tests (initdb + postgres as the postgres user)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from _requires import require

from qsgw_lab.pgserver import PgServer


def free_port() -> int:
    """A loopback TCP port that no socket holds now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    require("postgresql")
    # A port free now (a Debian cluster may hold 5432; a fixed one may be a client's).
    with PgServer(port=free_port()) as server:
        server.start()
        yield server
