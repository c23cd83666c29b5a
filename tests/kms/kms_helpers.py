"""Helpers for the kms_client tests: a small test PKI, a scripted HTTPS KME fake, a client."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kms_client import (
    Dialect,
    KmeClient,
    KmeEndpoint,
    RetryPolicy,
    SaeCredentials,
    TlsOptions,
)

# Fast retries so that failure paths finish in milliseconds.
FAST_RETRY = RetryPolicy(
    attempts=3, base_delay_s=0.005, max_delay_s=0.02, poll_interval_s=0.01,
    max_poll_interval_s=0.05,
)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class TestCA:
    """A throwaway CA issuing KME server certs (CN = KME ID, SAN 127.0.0.1) and SAE certs."""

    __test__ = False

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}.crt"
        _write(self.ca_file, self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool, san: bool = True) -> Pair:
        """``san=False``: a server certificate whose only identity is its CN."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server and san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        stem = cn if san or not server else f"{cn}-nosan"
        pair = Pair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(
            pair.key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return pair


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer_port: int


Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class FakeKme:
    """A FAKE KME (aiohttp over real mutual TLS) that answers what a test scripts, including
    the non-spec codes real KMEs send (404/409/422/500/504, 401 without a body), which the
    simulator does not produce. ``handler(request, n)`` gets the 0-based request count."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    handler: Handler | None = None

    @property
    def count(self) -> int:
        return len(self.seen)


def key_json(n: int, nbytes: int = 32) -> dict[str, Any]:
    return {
        "keys": [
            {"key_ID": str(uuid.uuid4()), "key": base64.b64encode(os.urandom(nbytes)).decode()}
            for _ in range(n)
        ]
    }


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(body), content_type="application/json")


def make_client(
    pki: dict[str, Any],
    urls: list[str],
    *,
    kme_id: str = "KME_A",
    sae: str = "sae_a",
    timeout: float = 2.0,
    retry: RetryPolicy = FAST_RETRY,
    tls: TlsOptions | None = None,
    dialect: str | Dialect = "etsi",
) -> KmeClient:
    pair: Pair = pki[sae]
    opts = tls or TlsOptions()
    return KmeClient(
        [KmeEndpoint(url=u, kme_id=kme_id, ca_file=pki["ca"].ca_file, tls=opts) for u in urls],
        SaeCredentials(sae_id="SAE_A", cert_file=pair.cert, key_file=pair.key),
        timeout=timeout,
        retry=retry,
        dialect=dialect,
    )
