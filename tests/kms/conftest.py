"""Fixtures for the kms_client tests: a small test PKI and a scripted HTTPS KME fake."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kms_helpers import FakeKme, Handler, Pair, Seen, TestCA


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = TestCA(tmp_path / "ca", "test-ca")
    other = TestCA(tmp_path / "other", "other-ca")
    return {
        "ca": ca,
        "other": other,
        "kme_a": ca.issue("KME_A", server=True),
        "kme_x": ca.issue("KME_X", server=True),
        "sae_a": ca.issue("SAE_A", server=False),
        "sae_rogue": other.issue("SAE_A", server=False),
    }


@pytest.fixture
async def fake_kme_factory(
    pki: dict[str, Any],
) -> AsyncIterator[Callable[..., Awaitable[FakeKme]]]:
    runners: list[web.AppRunner] = []

    async def start(
        handler: Handler,
        server_pair: Pair | None = None,
        adjust_tls: Callable[[ssl.SSLContext], None] | None = None,
    ) -> FakeKme:
        fake = FakeKme(handler=handler)
        pair = server_pair or pki["kme_a"]

        async def dispatch(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            peer = request.transport.get_extra_info("peername") if request.transport else None
            fake.seen.append(
                Seen(request.method, request.raw_path.split("?")[0], dict(request.query), body,
                     peer[1] if peer else 0)
            )
            assert fake.handler is not None
            return await fake.handler(request, fake.count - 1)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", dispatch)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"].ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        if adjust_tls is not None:
            adjust_tls(ctx)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        fake.url = f"https://127.0.0.1:{port}"
        return fake

    try:
        yield start
    finally:
        for r in runners:
            await asyncio.wait_for(r.cleanup(), 10)
