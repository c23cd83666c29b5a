"""A real PostgreSQL server for the HA tests (initdb + postgres as the postgres user)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _requires import require

from qsgw_lab.pgserver import PgServer


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    require("postgresql")
    # Its own port per worktree run: a Debian cluster may hold 5432.
    with PgServer(port=55000 + os.getpid() % 4000) as server:
        server.start()
        yield server
