"""Mutual TLS for the SAE side: per-endpoint TLS options, the SSL context, the KME pin.

The KME's identity is checked inside the TLS handshake (``_PinnedSSLObject``), so a
KME that is not the one configured never receives a request: always the CA chain and
the KME ID as the certificate's subject CN, plus one of

- ``hostname`` (default): the certificate's subjectAltName matches the URL's host;
- ``kme-id``: no hostname match (certificates whose only identity is the CN);
- ``cert-sha256`` / ``spki-sha256``: the SHA-256 of the certificate (DER) or of its
  SubjectPublicKeyInfo equals the configured pin (no hostname match).

A new connection resumes the endpoint's last TLS session (a session ticket) while the
certificate it was verified from is younger than ``RESUME_MAX_AGE_S``: an SAE that
calls minutes apart pays a quarter of a full handshake's CPU, and the KME under half.
The pin is checked on a resumed connection as on a full one (the session keeps the
certificate), and after that age the chain is verified afresh.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms_client._errors import KmeInvalidArgument

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

Verify = Literal["hostname", "kme-id", "cert-sha256", "spki-sha256"]
VERIFY_MODES: tuple[str, ...] = ("hostname", "kme-id", "cert-sha256", "spki-sha256")
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# How long a KME certificate, once verified in a full handshake, is trusted through
# resumed sessions: a replaced or revoked certificate is checked again within this.
RESUME_MAX_AGE_S = 600.0


def normalise_sha256(value: str) -> str:
    """A SHA-256 pin as 64 lower-case hex digits; colons and spaces are allowed in input."""
    text = value.replace(":", "").replace(" ", "").lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise KmeInvalidArgument("a SHA-256 pin must be 64 hex digits (colons allowed)")
    return text


#: TLS 1.2 suites offered unless `kme.tls.ciphers` says otherwise: forward secret,
#: AEAD only (no SHA-1, no CBC), as BSI TR-02102-2 recommends.
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """How one KME endpoint's certificate is verified, and what TLS we offer it."""

    verify: Verify = "hostname"
    cert_sha256: str | None = None
    spki_sha256: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    # OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are always the library's).
    ciphers: str | None = None

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise KmeInvalidArgument(f"tls verify must be one of {', '.join(VERIFY_MODES)}")
        if self.min_version not in _VERSIONS:
            raise KmeInvalidArgument("tls min_version must be 1.2 or 1.3")
        for name in ("cert_sha256", "spki_sha256"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, normalise_sha256(value))
        wanted = {"cert-sha256": "cert_sha256", "spki-sha256": "spki_sha256"}.get(self.verify)
        for name in ("cert_sha256", "spki_sha256"):
            given = getattr(self, name) is not None
            if name == wanted and not given:
                raise KmeInvalidArgument(f"tls verify: {self.verify} needs tls {name}")
            if name != wanted and given:
                raise KmeInvalidArgument(
                    f"tls {name} is only used with verify: {name.replace('_', '-')}"
                )


class KmePinError(ssl.SSLCertVerificationError):
    """The KME's certificate verified but is not the pinned KME (raised in the handshake)."""

    def __init__(self, message: str) -> None:
        super().__init__(1, message)
        self.verify_message = message
        self.verify_code = 0


def cert_fingerprints(der: bytes) -> tuple[str, str]:
    """(SHA-256 of the certificate, SHA-256 of its SubjectPublicKeyInfo), as hex."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest(), hashlib.sha256(spki).hexdigest()


def pin_problem(kme_id: str, options: TlsOptions, peercert: dict[str, Any] | None,
                der: bytes | None) -> str | None:
    """Why this verified certificate is not the configured KME, or None when it is."""
    cn = subject_common_name(peercert)
    if cn != kme_id:
        return f"the KME certificate's CN is {cn!r}, expected the KME ID {kme_id!r}"
    if options.verify in ("cert-sha256", "spki-sha256"):
        if der is None:
            return "the KME presented no certificate"
        cert_hash, spki_hash = cert_fingerprints(der)
        if options.verify == "cert-sha256" and cert_hash != options.cert_sha256:
            return (f"the KME certificate's SHA-256 is {cert_hash}, "
                    f"not the pinned kme.tls.cert_sha256 {options.cert_sha256}")
        if options.verify == "spki-sha256" and spki_hash != options.spki_sha256:
            return (f"the KME certificate's SPKI SHA-256 is {spki_hash}, "
                    f"not the pinned kme.tls.spki_sha256 {options.spki_sha256}")
    return None


class SessionCache:
    """One endpoint's latest TLS session, and how its handshakes went."""

    __slots__ = ("full", "resumed", "session", "verified_at")

    def __init__(self) -> None:
        self.session: ssl.SSLSession | None = None
        self.verified_at = 0.0  # when the certificate behind `session` was verified
        self.full = 0
        self.resumed = 0


class _PinnedSSLObject(ssl.SSLObject):
    """Checks the pin as soon as the handshake is done, before any request is written;
    offers the endpoint's last session, and keeps the ticket the KME sends back."""

    _kme_id = ""
    _options = TlsOptions()
    _cache = SessionCache()  # replaced per context
    _offered_at: float | None = None
    _verified_at: float | None = None

    def do_handshake(self) -> None:
        cache = self._cache
        if self._offered_at is None:  # the first call: nothing is on the wire yet
            self._offered_at = 0.0
            if cache.session is not None \
                    and time.monotonic() - cache.verified_at < RESUME_MAX_AGE_S:
                try:
                    self.session = cache.session
                    self._offered_at = cache.verified_at
                except (ValueError, ssl.SSLError):
                    cache.session = None
        super().do_handshake()
        problem = pin_problem(self._kme_id, self._options, self.getpeercert(),
                              self.getpeercert(binary_form=True))
        if problem is not None:
            cache.session = None
            raise KmePinError(problem)
        if self.session_reused:
            cache.resumed += 1
            self._verified_at = self._offered_at
        else:
            cache.full += 1
            self._verified_at = time.monotonic()

    def read(self, len: int = 1024, buffer: WriteableBuffer | None = None) -> bytes:
        data = super().read(len, buffer)
        if self._verified_at is not None:
            # TLS 1.3 sends its ticket right after the handshake, so it has come by the
            # first data; asked once (Python copies the session on each ask).
            session = self.session
            if session is not None and session.has_ticket:
                self._cache.session, self._cache.verified_at = session, self._verified_at
            self._verified_at = None
        return data


def handshake_counts(ctx: ssl.SSLContext) -> tuple[int, int]:
    """(full, resumed) TLS handshakes made with a context from ``client_ssl_context``."""
    cls = ctx.sslobject_class
    cache = getattr(cls, "_cache", None)
    return (cache.full, cache.resumed) if isinstance(cache, SessionCache) else (0, 0)


def client_ssl_context(
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    *,
    kme_id: str | None = None,
    options: TlsOptions | None = None,
) -> ssl.SSLContext:
    """A context that verifies the KME against ``ca_file`` and presents our certificate.

    With ``kme_id``, the KME ID (and any pin in ``options``) is checked in the handshake.
    """
    opts = options or TlsOptions()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[opts.min_version]
    ctx.check_hostname = opts.verify == "hostname"
    ctx.verify_mode = ssl.CERT_REQUIRED
    # An explicit default: Python's own depends on how it was built (Debian's python3
    # takes OpenSSL's list, SHA-1 CBC suites included; python.org's does not).
    ctx.set_ciphers(DEFAULT_TLS12_CIPHERS)
    if opts.ciphers is not None:
        try:
            ctx.set_ciphers(opts.ciphers)
        except ssl.SSLError:
            raise KmeInvalidArgument(
                f"tls ciphers {opts.ciphers!r} names no cipher OpenSSL knows"
            ) from None
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
    if kme_id is not None:
        ctx.sslobject_class = type(
            "_PinnedSSLObjectFor", (_PinnedSSLObject,),
            {"_kme_id": kme_id, "_options": opts, "_cache": SessionCache()})
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
