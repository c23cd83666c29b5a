"""TLS towards a KME: certificates without a SAN, each pin, a wrong pin (refused before any
request), a KME offering only legacy SHA-1 CBC suites (a FAKE KME: a Python ssl server
limited to TLS 1.2 with those suites, which the simulator never serves), no retries."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kms_helpers import FakeKme, Pair, json_response, make_client

from kms_client import KmeIdentityMismatch, KmeTlsError, KmeUnavailable, TlsOptions

Factory = Callable[..., Awaitable[FakeKme]]
LEGACY = "ECDHE-ECDSA-AES128-SHA"  # TLS 1.2, SHA-1 MAC, CBC: not in Python's default list

STATUS = {
    "source_KME_ID": "KME_A", "target_KME_ID": "KME_B", "master_SAE_ID": "SAE_A",
    "slave_SAE_ID": "SAE_B", "key_size": 256, "stored_key_count": 10, "max_key_count": 100,
    "max_key_per_request": 8, "max_key_size": 1024, "min_key_size": 64, "max_SAE_ID_count": 0,
}


async def status_ok(request: web.Request, n: int) -> web.StreamResponse:
    return json_response(200, STATUS)


def hashes_of(pair: Pair) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest(), hashlib.sha256(spki).hexdigest()


@pytest.fixture
def nosan(pki: dict[str, Any]) -> Pair:
    pair: Pair = pki["ca"].issue("KME_A", server=True, san=False)
    return pair


async def test_no_san_refused_by_default_with_the_pin_options_named(
    fake_kme_factory: Factory, pki: dict[str, Any], nosan: Pair
) -> None:
    fake = await fake_kme_factory(status_ok, server_pair=nosan)
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeIdentityMismatch) as info:
            await client.status("SAE_B")
    assert info.value.kind == "hostname"
    msg = str(info.value)
    assert "'127.0.0.1'" in msg and "subjectAltName" in msg
    assert "verify: kme-id" in msg and "cert-sha256" in msg and "spki-sha256" in msg
    assert fake.count == 0  # nothing was sent, and a certificate problem is not retried


def _pins(pair: Pair) -> list[TlsOptions]:
    cert_hash, spki_hash = hashes_of(pair)
    colons = ":".join(cert_hash[i : i + 2] for i in range(0, 64, 2)).upper()
    return [
        TlsOptions(verify="kme-id"),
        TlsOptions(verify="cert-sha256", cert_sha256=colons),
        TlsOptions(verify="spki-sha256", spki_sha256=spki_hash),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["kme-id", "cert-sha256", "spki-sha256"])
async def test_no_san_accepted_with_each_pin(
    fake_kme_factory: Factory, pki: dict[str, Any], nosan: Pair, which: int
) -> None:
    fake = await fake_kme_factory(status_ok, server_pair=nosan)
    async with make_client(pki, [fake.url], tls=_pins(nosan)[which]) as client:
        status = await client.status("SAE_B")
    assert status.stored_key_count == 10 and fake.count == 1


@pytest.mark.parametrize("which", [0, 1, 2], ids=["kme-id", "cert-sha256", "spki-sha256"])
async def test_wrong_pin_refused_before_any_request(
    fake_kme_factory: Factory, pki: dict[str, Any], nosan: Pair, which: int
) -> None:
    # The same CA, the same KME ID: only the pin tells this certificate apart.
    other = pki["ca"].issue("KME_A", server=True)
    fake = await fake_kme_factory(status_ok, server_pair=other if which else pki["kme_x"])
    async with make_client(pki, [fake.url], tls=_pins(nosan)[which]) as client:
        with pytest.raises(KmeIdentityMismatch) as info:
            await client.status("SAE_B")
    assert info.value.kind == "pin"
    assert "no request was sent" in str(info.value)
    assert fake.count == 0


def test_pin_options_are_checked() -> None:
    with pytest.raises(ValueError, match="needs tls cert_sha256"):
        TlsOptions(verify="cert-sha256")
    with pytest.raises(ValueError, match="64 hex digits"):
        TlsOptions(verify="spki-sha256", spki_sha256="abcd")
    with pytest.raises(ValueError, match="only used with verify: cert-sha256"):
        TlsOptions(verify="kme-id", cert_sha256="0" * 64)


@contextlib.asynccontextmanager
async def counting_proxy(target_port: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP relay on loopback that counts connections (each one is a TLS handshake)."""
    seen: list[int] = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(1)
        ur, uw = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def legacy_only(ctx: ssl.SSLContext) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(LEGACY)


async def test_legacy_cipher_kme_gives_the_cipher_message_not_retried(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(status_ok, adjust_tls=legacy_only)
    port = int(fake.url.rsplit(":", 1)[1])
    async with counting_proxy(port) as (url, seen), make_client(pki, [url]) as client:
        with pytest.raises(KmeTlsError) as info:
            await client.status("SAE_B")
    assert not isinstance(info.value, KmeUnavailable)
    assert info.value.kind == "cipher"
    msg = str(info.value)
    assert f"the KME accepts {LEGACY} (TLSv1.2)" in msg
    assert "qsgw offered" in msg and "ECDHE-ECDSA-AES128-GCM-SHA256" in msg
    assert f'kme.tls.ciphers: "{LEGACY}"' in msg
    # One failed handshake plus the one diagnosis: never the 3 attempts of the policy.
    assert len(seen) == 2 and fake.count == 0


async def test_legacy_cipher_kme_works_once_its_suite_is_configured(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(status_ok, adjust_tls=legacy_only)
    async with make_client(pki, [fake.url], tls=TlsOptions(ciphers=LEGACY)) as client:
        assert (await client.status("SAE_B")).key_size == 256


async def test_unknown_ca_message_names_the_ca_file(
    fake_kme_factory: Factory, pki: dict[str, Any], tmp_path: Path
) -> None:
    fake = await fake_kme_factory(status_ok, server_pair=pki["other"].issue("KME_A", server=True))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeIdentityMismatch) as info:
            await client.status("SAE_B")
    assert info.value.kind == "unknown-ca"
    assert str(pki["ca"].ca_file) in str(info.value) and "kme.ca_file" in str(info.value)


def test_the_default_offer_is_aead_and_forward_secret_whatever_python_was_built_with(
    pki: dict[str, Any]
) -> None:
    # Debian's python3 takes OpenSSL's default list (SHA-1 CBC suites included); the
    # client's own default must not depend on that.
    from kms_client._tls import client_ssl_context

    sae = pki["sae_a"]
    names = [c["name"] for c in client_ssl_context(pki["ca"].ca_file, sae.cert, sae.key)
             .get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert names and all(("GCM" in n or "CHACHA20" in n) and n.startswith(("ECDHE", "DHE"))
                         for n in names), names
    assert LEGACY not in names
