"""TLS failure triage: what went wrong in a handshake with a KME, and what the operator does.

``triage`` names the kind of failure and a message saying what to do. Every kind it
returns is one a retry cannot fix (the client does not retry it); ``None`` means TLS
is not (provably) to blame. A handshake that ends in a failure alert or an EOF may be
a cipher mismatch: ``diagnose_ciphers`` then makes one more handshake offering every
suite OpenSSL has, to name what the KME accepts (nothing is sent after it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import anyio

from kms_client._tls import KmePinError, cert_fingerprints

Kind = Literal[
    "pin", "hostname", "unknown-ca", "expired", "server-cert", "client-cert", "cipher",
    "version",
]
# The kinds where the KME's certificate is at fault (KmeIdentityMismatch), not ours.
SERVER_CERT_KINDS = ("pin", "hostname", "unknown-ca", "expired", "server-cert")

# OpenSSL X509_V_ERR_* codes.
_HOSTNAME_CODES = (62, 64)  # hostname mismatch, IP address mismatch
_UNKNOWN_CA_CODES = (2, 18, 19, 20, 21)
_TIME_CODES = (9, 10)  # not yet valid, expired

# OpenSSL reasons meaning "the KME's TLS stack refused our client certificate".
_CLIENT_CERT_REJECTED = (
    "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
    "ACCESS_DENIED", "DECRYPT_ERROR",
)
_MAYBE_CIPHER = ("HANDSHAKE_FAILURE", "NO_SHARED_CIPHER", "NO_CIPHERS", "INSUFFICIENT_SECURITY")
_VERSION = ("UNSUPPORTED_PROTOCOL", "PROTOCOL_VERSION", "TLSV1_ALERT_PROTOCOL_VERSION")

RESET_HINT = (
    "connection reset by the KME (with TLS 1.3 this is how a KME refusing "
    "the SAE certificate shows)"
)


@dataclass(frozen=True, slots=True)
class TlsFailure:
    kind: Kind
    message: str


@dataclass(frozen=True, slots=True)
class Where:
    """What a message names: the endpoint, the KME ID, the CA file, our context."""

    url: str
    kme_id: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    context: ssl.SSLContext
    timeout: float


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in seen):
        seen.append(cur)
        # aiohttp's wrappers subclass the ssl errors they wrap: the cause is the error.
        if not isinstance(cur, aiohttp.ClientError) or cur.__cause__ is None:
            out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _server_cert_failure(err: ssl.SSLCertVerificationError, where: Where) -> TlsFailure:
    if isinstance(err, KmePinError):
        return TlsFailure("pin", (
            f"KME at {where.url} is not the configured KME {where.kme_id}: {err.verify_message}; "
            "no request was sent. Check kme_id and the pin in kme.tls (`qsgw kms probe` "
            "prints the certificate's hashes)"))
    code = err.verify_code
    why = err.verify_message or "certificate verify failed"
    host = urlsplit(where.url).hostname or where.url
    if code in _HOSTNAME_CODES:
        return TlsFailure("hostname", (
            f"KME certificate of {where.kme_id} at {where.url} is not valid for {host!r} ({why}): "
            "it has no subjectAltName for that address. Reissue it with one, or pin the KME "
            "instead: kme.tls.verify: kme-id (CA chain + KME ID as CN), or verify: cert-sha256 "
            "with cert_sha256, or verify: spki-sha256 with spki_sha256"))
    if code in _UNKNOWN_CA_CODES:
        return TlsFailure("unknown-ca", (
            f"KME certificate at {where.url} did not verify against the CA in {where.ca_file} "
            f"({why}): it was not issued by that CA. Set kme.ca_file (or the endpoint's "
            "ca_file) to the CA that issued the KME's certificate"))
    if code in _TIME_CODES:
        return TlsFailure("expired", (
            f"KME certificate at {where.url} is outside its validity period ({why}); the KME's "
            "certificate must be renewed (or this host's clock is wrong)"))
    return TlsFailure("server-cert", f"KME certificate at {where.url} did not verify: {why}")


def classify(exc: BaseException, where: Where) -> tuple[TlsFailure | None, bool]:
    """(a failure found in the chain, whether a cipher diagnosis could explain it better)."""
    eof = False
    for cur in _chain(exc):
        if isinstance(cur, ssl.SSLCertVerificationError):
            return _server_cert_failure(cur, where), False
        if isinstance(cur, ssl.SSLError):
            # Some Python builds' asyncio re-raise the handshake error without .reason:
            # read the OpenSSL words from the message then.
            reason = (cur.reason or str(cur)).upper()
            if any(r in reason for r in _VERSION):
                return TlsFailure("version", (
                    f"KME at {where.url} and qsgw share no TLS version ({cur.reason}); qsgw "
                    f"offers TLS {where.context.minimum_version.name} and later "
                    "(kme.tls.min_version); ETSI GS QKD 014 asks for TLS 1.2 or later")), False
            cipher = any(r in reason for r in _MAYBE_CIPHER)
            if cipher or any(r in reason for r in _CLIENT_CERT_REJECTED):
                # In TLS 1.2 a refused client certificate and no shared cipher both
                # end in a handshake_failure alert: the diagnosis tells them apart.
                return TlsFailure("client-cert", (
                    f"KME at {where.url} refused the SAE certificate {where.cert_file} in the "
                    f"TLS handshake ({cur.reason}); the KME must trust the CA that issued it")), \
                    cipher
            # An EOF, or a TLS error we cannot read: one diagnostic handshake tells more.
            eof = True
        # asyncio's SSL transport reports a KME's handshake alert as a bare reset.
        if isinstance(cur, (anyio.EndOfStream, aiohttp.ServerDisconnectedError,
                            ConnectionResetError)):
            eof = True
    return None, eof


def _offered(ctx: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in ctx.get_ciphers()]


def _diagnostic_handshake(host: str, port: int, cert_file: Path, key_file: Path,
                          timeout: float) -> tuple[str, str, bytes | None] | None:
    """(cipher, version, the KME's certificate) from a handshake that accepts anything."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # diagnosis only: nothing is sent over it
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(str(cert_file), str(key_file))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            cipher = tls.cipher()
            version = tls.version() or "?"
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return (cipher[0], version, der) if cipher else None


def _probe_handshake(host: str, port: int, where: Where) -> tuple[str, str] | None:
    found = _diagnostic_handshake(host, port, where.cert_file, where.key_file, where.timeout)
    return None if found is None else (found[0], found[1])


async def fetch_fingerprints(url: str, cert_file: Path, key_file: Path, timeout: float
                             ) -> tuple[str, str] | None:
    """(certificate SHA-256, SPKI SHA-256) of the certificate the KME at ``url`` serves,
    unverified: for an operator to compare with the KME's own and then pin."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return None
    found = await asyncio.to_thread(_diagnostic_handshake, parts.hostname, parts.port or 443,
                                    cert_file, key_file, timeout)
    if found is None or found[2] is None:
        return None
    return cert_fingerprints(found[2])


async def diagnose_ciphers(where: Where) -> TlsFailure | None:
    """A cipher message when the KME accepts a suite our context does not offer, else None."""
    parts = urlsplit(where.url)
    if parts.hostname is None:
        return None
    port = parts.port or 443
    found = await asyncio.to_thread(_probe_handshake, parts.hostname, port, where)
    if found is None:
        return None
    cipher, version = found
    offered = _offered(where.context)
    if cipher in offered:
        return None
    shown = ", ".join(offered[:6]) + (f" (+{len(offered) - 6} more)" if len(offered) > 6 else "")
    return TlsFailure("cipher", (
        f"no shared TLS cipher with KME at {where.url}: the KME accepts {cipher} ({version}), "
        f"which qsgw does not offer; qsgw offered {shown}. Ask the KME's vendor for TLS 1.3 "
        "or TLS 1.2 with AES-GCM; to accept the legacy suite meanwhile set kme.tls.ciphers: "
        f"\"{cipher}\" for this endpoint"))


def describe(exc: BaseException) -> str:
    """A short cause for a transport error: the TLS reason, or the OS error."""
    for cur in _chain(exc):
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate verify failed"
        if isinstance(cur, ssl.SSLError):
            return str(cur.reason or "TLS error")
        if isinstance(cur, ConnectionResetError):
            return RESET_HINT
        if isinstance(cur, anyio.EndOfStream):
            return "connection closed by the KME during the TLS handshake"
        if isinstance(cur, aiohttp.ServerDisconnectedError):
            return ("connection closed by the KME before it answered (with TLS 1.3 this is "
                    "how a KME refusing the SAE certificate shows)")
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
    return type(exc).__name__


async def triage(exc: BaseException, where: Where) -> TlsFailure | None:
    """The TLS failure behind a transport error (non-retryable), or None."""
    found, maybe_cipher = classify(exc, where)
    if maybe_cipher:
        return await diagnose_ciphers(where) or found
    return found
