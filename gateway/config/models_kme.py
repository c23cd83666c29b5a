"""Config models of the KME section (kme:): endpoints, TLS verification and pins, dialects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    model_validator,
)

from gateway.config.values import (
    PathField,
    SaeId,
    Seconds,
    _file_validator,
    _https_url,
    _Model,
)

# --- KME TLS pinning and dialects (issue 16): kept together for the config split ---


class KmeTlsSettings(_Model):
    """kme.tls (or an endpoint's tls): how the KME certificate is verified, what TLS we offer.

    verify: hostname (SAN matches the URL's host; the default), kme-id (CA chain and the
    KME ID as CN, no hostname match), cert-sha256 / spki-sha256 (that pin must match).
    The CA chain and the KME ID are checked in every mode, in the handshake.
    """

    verify: Literal["hostname", "kme-id", "cert-sha256", "spki-sha256"] = "hostname"
    cert_sha256: str | None = None
    spki_sha256: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2; None: a secure default

    @model_validator(mode="after")
    def _consistent(self) -> KmeTlsSettings:
        self.options()  # raises ValueError naming what is missing or unused
        return self

    def options(self) -> Any:
        from kms_client._tls import TlsOptions

        return TlsOptions(self.verify, self.cert_sha256, self.spki_sha256, self.min_version,
                          self.ciphers)


def _dialect_name(value: str) -> str:
    from kms_client._dialects import DIALECTS

    if value not in DIALECTS:
        raise ValueError(f"unknown KME dialect {value!r}; allowed: {', '.join(DIALECTS)}")
    return value


DialectName = Annotated[str, AfterValidator(_dialect_name)]


class KmeDialectRule(_Model):
    """kme.dialect_rules[]: an answer with this status (and message words) means that."""

    status: int = Field(ge=400, le=599)
    message: str | None = None  # case-insensitive substring of the error body's message
    calls: tuple[Literal["status", "enc_keys", "dec_keys"], ...] = Field(
        default=("status", "enc_keys", "dec_keys"), min_length=1)
    means: Literal["unavailable", "not-found", "not-yet", "bad-request", "unauthorized"]


def kme_dialect(name: str, rules: Sequence[KmeDialectRule]) -> Any:
    """The kms_client Dialect for a dialect name plus configured rules."""
    from kms_client._dialects import Rule, get_dialect

    return get_dialect(name).with_rules(
        [Rule(r.status, r.means, r.calls, r.message, "kme.dialect_rules") for r in rules])


# --- end of the issue-16 KME block ---


class KmeEndpointSettings(_Model):
    url: Annotated[str, BeforeValidator(_https_url)]
    kme_id: SaeId
    # Per endpoint, when a backup KME is signed by another CA; else kme.ca_file.
    ca_file: PathField | None = None
    # Per endpoint, when it differs from kme.tls / kme.dialect (e.g. a backup KME).
    tls: KmeTlsSettings | None = None
    dialect: DialectName | None = None

    _files = _file_validator("ca_file", secret=False)


class KmeSettings(_Model):
    sae_id: SaeId
    endpoints: tuple[KmeEndpointSettings, ...] = Field(min_length=1)
    ca_file: PathField
    cert_file: PathField
    key_file: PathField
    timeout_s: Seconds = 5.0
    dec_keys_deadline_s: Seconds = 10.0
    key_ids_name_master: bool = False
    pool_low_threshold: int = Field(default=10, ge=0)
    tls: KmeTlsSettings = Field(default_factory=KmeTlsSettings)
    dialect: DialectName = "etsi"  # how error answers are read (kms_client._dialects)
    dialect_rules: tuple[KmeDialectRule, ...] = ()
    # False for KMEs that drop undelivered keys on every enc_keys: no peer fetches ahead.
    prefetch: bool = True

    _files = _file_validator("ca_file", "cert_file", secret=False)
    _secrets = _file_validator("key_file", secret=True)
