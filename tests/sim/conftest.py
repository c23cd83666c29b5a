"""Fixtures for the KME simulator tests: a small test topology and mutual-TLS clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from simsupport import TEST_TOPOLOGY, ClientFactory, make_client

from kms_client.sim.server import Simulator


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.yaml"
    path.write_text(TEST_TOPOLOGY)
    return path


@pytest.fixture
async def sim(topology_file: Path, tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator.start(topology_file, tmp_path / "state", seed=1) as s:
        yield s


@pytest.fixture
async def client_for(sim: Simulator) -> AsyncIterator[ClientFactory]:
    """client_for(sae, kme=None): an httpx client with that SAE's certificate, at its KME."""
    made: list[httpx.AsyncClient] = []

    def make(sae: str, kme: str | None = None, **kw: Any) -> httpx.AsyncClient:
        return make_client(sim.endpoints, sae, kme, made, **kw)

    yield make
    for c in made:
        await c.aclose()
