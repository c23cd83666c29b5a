"""Mutual TLS for the SAE side: the SSL context, the KME ID check, TLS failure triage."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from kms_client._errors import KmeInvalidArgument


def client_ssl_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A context that verifies the KME against ``ca_file`` (and its SANs) and presents our cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise KmeInvalidArgument(f"cannot load KME CA file {ca_file}: {_reason(exc)}") from None
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        # The reason only: never the key file's content.
        raise KmeInvalidArgument(
            f"cannot load SAE certificate {cert_file} / key {key_file}: {_reason(exc)}"
        ) from None
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def subject_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate as returned by ``SSLObject.getpeercert()``."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    if ssl_object is None:
        return None
    return subject_common_name(ssl_object.getpeercert())


# OpenSSL reasons meaning "the KME's TLS stack refused our client certificate".
_CLIENT_CERT_REJECTED = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "HANDSHAKE_FAILURE",
    "ACCESS_DENIED",
)


def classify_tls_failure(exc: BaseException) -> str | None:
    """Walk an exception chain: ``"server-cert"`` when the KME's certificate did not verify,
    ``"client-cert"`` when the KME refused ours, ``None`` when TLS is not to blame."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return "server-cert"
        if isinstance(cur, ssl.SSLError):
            reason = (cur.reason or "").upper()
            if any(r in reason for r in _CLIENT_CERT_REJECTED):
                return "client-cert"
        cur = cur.__cause__ or cur.__context__
    return None


RESET_HINT = (
    "connection reset by the KME (with TLS 1.3 this is how a KME refusing "
    "the SAE certificate shows)"
)


def describe_tls_failure(exc: BaseException) -> str:
    """A short cause for a transport error: the TLS reason, or the OS error."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur.verify_message or "certificate verify failed"
        if isinstance(cur, ssl.SSLError):
            return str(cur.reason or "TLS error")
        if isinstance(cur, ConnectionResetError):
            return RESET_HINT
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__
    return type(exc).__name__
