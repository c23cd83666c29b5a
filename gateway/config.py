"""The gateway config: one YAML file -> frozen, typed settings.

`load_config(path)` parses the file, validates it with strict pydantic models
and a second pass of cross-field checks, and raises `ConfigError` carrying every
problem found, each with the file, line, column and dotted field path, worded to
say what is allowed. Key material is never echoed: secrets live in 0600 files
and only their paths appear in the config.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeAlias

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    InstanceOf,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.fsguard import FileSafetyError, check_dir

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AlarmsSettings",
    "AuditSettings",
    "BackoffSettings",
    "CertAuth",
    "ConfigError",
    "ConfigIssue",
    "ControlSettings",
    "GatewayConfig",
    "GatewaySettings",
    "HostPort",
    "IpsecTunnel",
    "KmeDialectRule",
    "KmeEndpointSettings",
    "KmeSettings",
    "KmeTlsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "MqttSettings",
    "PeerConfig",
    "PeerDiff",
    "PskAuth",
    "TelemetrySettings",
    "WireGuardTunnel",
    "changed_sections",
    "diff_peers",
    "kme_dialect",
    "load_config",
    "parse_config",
]

IDENTITY_KEY_FILES = ("ed25519.key", "mldsa65.key")
DEFAULT_CONFIG_PATH = Path("/etc/qsgw/gateway.yaml")


# --------------------------------------------------------------------------- errors


class ConfigIssue(NamedTuple):
    """One problem: `(file, line, field, message)`, plus the column (1-based; 0 = unknown)."""

    file: str
    line: int
    field: str
    message: str
    column: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """The config cannot be used; `errors` lists every problem found."""

    def __init__(self, errors: Sequence[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


# ------------------------------------------------------------------ value types


@dataclass(frozen=True)
class HostPort:
    """A `host:port` or `[v6]:port` address; `host` is an IP literal or a DNS name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_HOSTPORT_HINT = "expected host:port or [IPv6]:port, e.g. 192.0.2.1:7814 or [fd00::1]:7814"


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be 1-65535; {_HOSTPORT_HINT}")
    return int(text)


def _parse_hostport(value: object) -> object:
    if isinstance(value, HostPort) or not isinstance(value, str):
        return value  # the InstanceOf check reports the wrong type
    m = re.fullmatch(r"\[([^\]]+)\]:(\S*)", value)
    if m:
        host, port = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address; {_HOSTPORT_HINT}") from None
        return HostPort(host, _port(port))
    host, sep, port = value.rpartition(":")
    if not sep or not host or ":" in host:
        raise ValueError(_HOSTPORT_HINT)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
            raise ValueError(
                f"'{host}' is neither an IP address nor a host name; {_HOSTPORT_HINT}"
            ) from None
    return HostPort(host, _port(port))


def _parse_interface(value: object) -> object:
    """An address with prefix for a local interface: 203.0.113.1/24, fd00:1::1/64."""
    if not isinstance(value, str):
        raise ValueError("must be a string address/prefix, e.g. 203.0.113.1/24")
    if "/" not in value:
        raise ValueError(f"'{value}' needs a prefix length, e.g. 203.0.113.1/24 or fd00:1::1/64")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(
            f"'{value}' is not a valid address/prefix, e.g. 203.0.113.1/24 or fd00:1::1/64"
        ) from None


def _parse_network(value: object) -> object:
    """A network (CIDR) whose host bits are zero: 203.0.113.0/24, 203.0.113.2/32."""
    if not isinstance(value, str):
        raise ValueError("must be a string CIDR, e.g. 203.0.113.0/24")
    try:
        return ipaddress.ip_network(value)  # a bare address is a host route
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"'{value}' is not a valid CIDR, e.g. 203.0.113.0/24, 198.51.100.2/32 or fd00:2::/64"
        ) from None
    raise ValueError(f"'{value}' has host bits set; did you mean {net}?")


def _parse_path(value: object, info: ValidationInfo) -> object:
    """Relative paths resolve against the config file's directory."""
    if not isinstance(value, str):
        return value
    if not value:
        raise ValueError("must be a non-empty path")
    if _looks_like_key_material(value):
        # Never echo it: someone pasted a key where its file's path belongs.
        raise ValueError(
            "looks like key material, not a path: put the key in a 0600 file "
            "and give that file's path here"
        )
    p = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return Path(os.path.normpath(p))


def _looks_like_key_material(value: str) -> bool:
    value = value.strip()
    if "PRIVATE KEY" in value or "\n" in value:
        return True
    # A WireGuard key is 44 base64 characters ending in "="; a path hardly ever is.
    # Other base64 of 32+ bytes counts when it has no "/" (paths have).
    if len(value) < 40 or (value.count("/") and not (len(value) == 44 and value.endswith("="))):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) >= 32
    except (binascii.Error, ValueError):
        return False


def _check_files(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("check_files", True))


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    if _check_files(info):
        if not value.exists():
            raise ValueError(f"file not found: {value}")
        if not value.is_file():
            raise ValueError(f"not a regular file: {value}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"file not readable by this user: {value}")
    return value


def _secret_file(value: Path, info: ValidationInfo) -> Path:
    """A file holding a secret: must exist, be readable by its owner only, and be
    owned by the daemon's user."""
    _readable_file(value, info)
    if _check_files(info):
        st = value.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{value} is mode {mode:04o}, readable by group/others; it holds a secret: "
                f"run chmod 600 {value}"
            )
        if st.st_uid != os.geteuid():
            raise ValueError(
                f"{value} is owned by uid {st.st_uid}, not by the daemon's user "
                f"(uid {os.geteuid()}); it holds a secret: run chown {os.geteuid()} {value}"
            )
    return value


def _private_dir(value: Path, info: ValidationInfo, what: str) -> Path:
    """A directory of state or secrets: not writable by group/others (when it exists)."""
    if _check_files(info):
        try:
            check_dir(value, what)
        except FileSafetyError as exc:
            raise ValueError(str(exc)) from None
    return value


def _identity_dir(value: Path, info: ValidationInfo) -> Path:
    if _check_files(info):
        if not value.is_dir():
            raise ValueError(f"directory not found: {value} (make it with `qsgw keygen`)")
        _private_dir(value, info, "identity_dir")
        for name in IDENTITY_KEY_FILES:
            f = value / name
            if not f.exists():
                raise ValueError(f"{f} is missing (make the identity with `qsgw keygen`)")
            _secret_file(f, info)
    return value


def _b64_key32(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "must be a base64 WireGuard public key (32 bytes, 44 characters), "
            "as printed by `wg pubkey`"
        )
    return value


def _ifname(value: object) -> object:
    if isinstance(value, str) and (
        not 1 <= len(value) <= 15
        or not re.fullmatch(r"[A-Za-z0-9_.-]+", value)
        or value in (".", "..")
    ):
        raise ValueError("must be a Linux interface name: 1-15 characters of A-Z a-z 0-9 _ . -")
    return value


def _vici_uri(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"(unix://\S+|tcp://\S+:\d+)", value):
        raise ValueError("must be unix:///path/to/charon.vici or tcp://host:port")
    return value


def _https_url(value: object) -> object:
    if not isinstance(value, str):
        return value
    m = re.fullmatch(r"https://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]\s]+)(:\d{1,5})?/?", value)
    if not m:
        raise ValueError(
            "must be an https:// URL with host and optional port, "
            "e.g. https://192.0.2.10:8443 (no path; ETSI 014 paths are added)"
        )
    if m.group(2) and not 1 <= int(m.group(2)[1:]) <= 65535:
        raise ValueError("port must be 1-65535")
    return value.rstrip("/")


def _ts_or_addr(value: object) -> object:
    """IKE addresses: an IP, a CIDR, a DNS name or %any (passed to strongSwan)."""
    if not isinstance(value, str):
        return value
    if value in ("%any", "%any4", "%any6"):
        return value
    try:
        ipaddress.ip_network(value, strict=False)
        return value
    except ValueError:
        pass
    if _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
        return value
    raise ValueError(f"'{value}' is not an IP address, CIDR, host name or %any")


def _strict_cidr(value: object) -> object:
    net = _parse_network(value)
    return str(net) if isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) else net


_Net: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_Iface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface

HostPortField = Annotated[InstanceOf[HostPort], BeforeValidator(_parse_hostport)]
PathField = Annotated[InstanceOf[Path], BeforeValidator(_parse_path)]
_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_SAE_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
_PPK_ID_PATTERN = r"^[^\s]{1,255}$"
_PROPOSAL_PATTERN = r"^[a-z0-9_-]+$"
_TOPIC_PATTERN = r"^[^#+\s\x00]{1,64}$"
Name = Annotated[str, Field(pattern=_NAME_PATTERN)]
SaeId = Annotated[str, Field(pattern=_SAE_PATTERN)]
Proposal = Annotated[str, Field(pattern=_PROPOSAL_PATTERN)]
Seconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]
NetworkField = Annotated[_Net, BeforeValidator(_parse_network)]
InterfaceField = Annotated[_Iface, BeforeValidator(_parse_interface)]
IfName = Annotated[str, BeforeValidator(_ifname)]
IkeAddr = Annotated[str, BeforeValidator(_ts_or_addr)]
TrafficSelector = Annotated[str, BeforeValidator(_strict_cidr)]


class _Model(BaseModel):
    # strict: no silent coercion ("5" is not 5); frozen: settings are values.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _file_validator(*fields: str, secret: bool) -> Any:
    """A field validator checking (when file checks are on) that each file is usable."""

    def check(cls: type[Any], value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        return _secret_file(value, info) if secret else _readable_file(value, info)

    return field_validator(*fields)(classmethod(check))


# ------------------------------------------------------------------------- sections


class GatewaySettings(_Model):
    id: Name
    identity_dir: PathField = Field(default_factory=lambda: Path("/etc/qsgw/identity"))
    state_dir: PathField = Field(default_factory=lambda: Path("/var/lib/qsgw"))
    status_socket: PathField = Field(default_factory=lambda: Path("/run/qsgw/status.sock"))
    on_shutdown: Literal["keep", "block"] = "keep"

    @field_validator("identity_dir")
    @classmethod
    def _identity(cls, value: Path, info: ValidationInfo) -> Path:
        _identity_dir(value, info)
        if isinstance(info.context, dict):  # for the peers' static-key check
            info.context["identity_dir"] = value
        return value

    @field_validator("state_dir")
    @classmethod
    def _state(cls, value: Path, info: ValidationInfo) -> Path:
        return _private_dir(value, info, "state_dir")


class ControlSettings(_Model):
    listen: HostPortField = Field(default_factory=lambda: HostPort("0.0.0.0", 7814))  # noqa: S104
    max_frame_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    rate_limit_per_s: float = Field(default=5.0, gt=0)
    timestamp_window_s: float = Field(default=60, gt=0, le=3600)
    # Admission and load shedding (gateway.daemon.admission / conntable): what an
    # attacker at a peer's address can hold before it is refused or evicted.
    max_connections: int = Field(default=128, ge=4, le=65536)
    max_connections_per_source: int = Field(default=8, ge=1, le=1024)
    max_connections_per_peer: int = Field(default=2, ge=1, le=64)
    max_frames_per_connection: int = Field(default=4, ge=2, le=64)
    first_frame_timeout_s: float = Field(default=5.0, gt=0, le=60)
    lock_wait_s: float = Field(default=2.0, gt=0, le=30)
    flood_alarm_refusals: int = Field(default=50, ge=1)  # within 10 s: control_flood


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


class BackoffSettings(_Model):
    initial: Seconds = 1.0
    max: Seconds = 30.0

    @field_validator("max")
    @classmethod
    def _max_ge_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial")
        if initial is not None and value < initial:
            raise ValueError(f"must be >= initial ({initial:g} s)")
        return value


class WireGuardTunnel(_Model):
    type: Literal["wireguard"]
    driver: Literal["userspace", "kernel"] = "userspace"
    manage: Literal["full", "psk-only"] = "full"
    interface: IfName
    private_key_file: PathField | None = Field(default=None, validate_default=True)
    listen_port: Port | None = None
    addresses: tuple[InterfaceField, ...] = ()
    peer_public_key: Annotated[str, BeforeValidator(_b64_key32)]
    endpoint: HostPortField | None = None
    allowed_ips: tuple[NetworkField, ...] = Field(default=(), validate_default=True)
    persistent_keepalive_s: int = Field(default=0, ge=0, le=65535)
    wireguard_go: str = "wireguard-go"

    @field_validator("private_key_file")
    @classmethod
    def _private_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            if info.data.get("manage") == "full":
                raise ValueError(
                    "required with manage: full (a 0600 file from `wg genkey`); "
                    "use manage: psk-only to key an interface managed elsewhere"
                )
            return None
        return _secret_file(value, info)

    @field_validator("allowed_ips")
    @classmethod
    def _allowed(cls, value: tuple[_Net, ...], info: ValidationInfo) -> tuple[_Net, ...]:
        if not value and info.data.get("manage") == "full":
            raise ValueError("required with manage: full: at least one CIDR routed to the peer")
        return value


class PskAuth(_Model):
    psk_file: PathField

    _secrets = _file_validator("psk_file", secret=True)


class CertAuth(_Model):
    cert_file: PathField
    key_file: PathField
    ca_file: PathField
    local_id: str | None = None
    remote_id: str | None = None

    _files = _file_validator("cert_file", "ca_file", secret=False)
    _secrets = _file_validator("key_file", secret=True)


def _auth_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "psk_file" in value:
            return "psk"
        if "cert_file" in value or "key_file" in value:
            return "cert"
    return None


IkeAuth = Annotated[
    Annotated[PskAuth, Tag("psk")] | Annotated[CertAuth, Tag("cert")],
    Discriminator(
        _auth_kind,
        custom_error_type="auth_kind",
        custom_error_message="must be {psk_file: FILE} or {cert_file, key_file, ca_file, "
        "local_id, remote_id}",
    ),
]


class IpsecTunnel(_Model):
    type: Literal["ipsec"]
    vici_socket: Annotated[str, BeforeValidator(_vici_uri)] = "unix:///var/run/charon.vici"
    manage: Literal["full", "ppk-only"] = "full"
    connection: Name
    ppk_id: Annotated[str, Field(pattern=_PPK_ID_PATTERN)]
    ppk_required: bool = True
    local_addrs: tuple[IkeAddr, ...] = ("%any",)
    remote_addrs: tuple[IkeAddr, ...] = Field(default=(), validate_default=True)
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    # Passed through to strongSwan (e.g. ke1_mlkem768 where strongSwan >= 6).
    ike_proposals: tuple[Proposal, ...] = Field(
        default=("aes256gcm16-prfsha384-x25519",), min_length=1
    )
    esp_proposals: tuple[Proposal, ...] = Field(default=("aes256gcm16",), min_length=1)
    auth: IkeAuth | None = Field(default=None, validate_default=True)

    @field_validator("remote_addrs")
    @classmethod
    def _remote(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and info.data.get("manage") == "full":
            raise ValueError("required with manage: full: the peer gateway's IKE address(es)")
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: PskAuth | CertAuth | None, info: ValidationInfo) -> Any:
        if value is None and info.data.get("manage") == "full":
            raise ValueError(
                "required with manage: full: {psk_file: FILE} or "
                "{cert_file, key_file, ca_file, local_id, remote_id}"
            )
        return value


Tunnel = Annotated[WireGuardTunnel | IpsecTunnel, Field(discriminator="type")]


class StaticKemPin(_Model):
    """The peer's static McEliece public key: its file and that file's SHA-256."""

    public_file: PathField
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _check_static_kem(pin: StaticKemPin | None, info: ValidationInfo) -> StaticKemPin | None:
    """A McEliece suite needs the peer's key pinned and this gateway's own key made."""
    from gateway import static_kem as sk
    from gateway.crypto.suites import SuiteError, lookup_suite

    try:
        suite = lookup_suite(info.data["suite"])
    except (KeyError, SuiteError):
        return pin  # the suite's own error says what is wrong
    kem = sk.suite_static_kem(suite)
    if kem is None:
        if pin is not None:
            raise ValueError(f"only the McEliece suites use a static key; suite "
                             f"{suite.name!r} does not: remove static_kem")
        return None
    make = f"`qsgw keygen --out DIR --static-kem {suite.name}`"
    if pin is None:
        raise ValueError(
            f"required with suite {suite.name!r}: the peer's static {kem} public key, "
            f"{{public_file: FILE, sha256: HEX}} as printed by {make} on the peer")
    if not _check_files(info):
        return pin
    try:
        sk.load_pinned(pin.public_file, pin.sha256, kem)
    except sk.StaticKemError as exc:
        raise ValueError(str(exc)) from None
    identity_dir = (info.context or {}).get("identity_dir")
    if identity_dir is not None:
        for own in sk.key_files(identity_dir, kem):
            if not own.exists():
                raise ValueError(
                    f"suite {suite.name!r} needs this gateway's own static {kem} key: {own} "
                    f"is missing (make it with {make.replace('DIR', str(identity_dir))})")
        _secret_file(sk.key_files(identity_dir, kem)[0], info)
    return pin


class PeerConfig(_Model):
    id: Name
    sae_id: SaeId
    control: HostPortField
    identity: str
    role: Literal["auto", "initiator", "responder"] = "auto"
    qkd: Literal["required", "preferred", "off"] = "required"
    qkd_keys_per_epoch: int = Field(default=1, ge=1, le=16)
    qkd_prefetch: bool = True
    rekey_interval_s: Seconds = 120.0
    key_lifetime_s: Seconds = 300.0
    retry_backoff_s: BackoffSettings = Field(default_factory=BackoffSettings)
    suite: str = "default"
    # McEliece suites: the peer's static public key, pinned (gateway/static_kem.py).
    static_kem: StaticKemPin | None = Field(default=None, validate_default=True)
    tunnel: Tunnel

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str) -> str:
        from gateway.identity import PREFIX, IdentityError, PublicIdentity

        try:
            PublicIdentity.from_text(value)
        except IdentityError as exc:
            raise ValueError(
                f"not a valid public identity: {exc}; it is the {PREFIX}... line printed by "
                "`qsgw keygen` on the peer"
            ) from None
        return value

    @field_validator("key_lifetime_s")
    @classmethod
    def _lifetime(cls, value: float, info: ValidationInfo) -> float:
        rekey = info.data.get("rekey_interval_s")
        if rekey is not None and value <= rekey:
            raise ValueError(
                f"must exceed rekey_interval_s ({rekey:g} s), so a new key is made "
                "before the current one expires"
            )
        return value

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        try:
            from gateway.crypto.suites import SuiteError, lookup_suite
        except ImportError:  # pragma: no cover - only while the module is being written
            return value
        try:
            lookup_suite(value)
        except SuiteError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("static_kem")
    @classmethod
    def _static_kem(cls, value: StaticKemPin | None, info: ValidationInfo) -> Any:
        return _check_static_kem(value, info)


class MqttSettings(_Model):
    host: Annotated[str, Field(min_length=1)]
    port: Port = 1883
    ca_file: PathField | None = None  # TLS when ca_file or cert_file is given
    cert_file: PathField | None = None
    key_file: PathField | None = Field(default=None, validate_default=True)
    username: str | None = None
    password_file: PathField | None = Field(default=None, validate_default=True)
    topic_prefix: Annotated[str, Field(pattern=_TOPIC_PATTERN)] = "qsgw"
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    keepalive_s: int = Field(default=30, ge=1, le=3600)

    _files = _file_validator("ca_file", "cert_file", secret=False)

    @field_validator("key_file")
    @classmethod
    def _key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (value is None) != (info.data.get("cert_file") is None) and "cert_file" in info.data:
            raise ValueError("cert_file and key_file go together: give both or neither")
        return None if value is None else _secret_file(value, info)

    @field_validator("password_file")
    @classmethod
    def _password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if info.data.get("username") is None:
            raise ValueError("needs username")
        return _secret_file(value, info)


class MetricsSettings(_Model):
    listen: HostPortField = Field(default_factory=lambda: HostPort("127.0.0.1", 9814))


class AuditSettings(_Model):
    path: PathField | None = None  # default: <state_dir>/audit.jsonl
    rotate_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    sign: bool = False

    @field_validator("path")
    @classmethod
    def _audit_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _private_dir(value.parent, info, "audit directory")
        return value


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"


class AlarmsSettings(_Model):
    handshake_failures: int = Field(default=3, ge=1)


class TelemetrySettings(_Model):
    mqtt: MqttSettings | None = None
    metrics: MetricsSettings | None = None
    audit: AuditSettings | None = None
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    alarms: AlarmsSettings = Field(default_factory=AlarmsSettings)


class GatewayConfig(_Model):
    gateway: GatewaySettings
    control: ControlSettings = Field(default_factory=ControlSettings)
    kme: KmeSettings
    peers: tuple[PeerConfig, ...] = ()
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    def peer(self, peer_id: str) -> PeerConfig:
        for p in self.peers:
            if p.id == peer_id:
                return p
        raise KeyError(peer_id)


# ----------------------------------------------------------------- cross checks

Loc = tuple[str | int, ...]


def _get(data: Any, *path: str) -> Any:
    """A value from the raw data, or None where the path is absent or not a mapping."""
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _cross_checks(data: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Checks across sections and peers, each reported at the field that clashes.

    They run on the raw data, so they are reported together with any type errors.
    """
    raw_peers = data.get("peers")
    peers = list(enumerate(raw_peers)) if isinstance(raw_peers, tuple) else []

    def dupes(
        field: tuple[str, ...], what: str, tunnel_type: str | None = None
    ) -> Iterator[tuple[Loc, str]]:
        seen: dict[object, int] = {}
        for i, peer in peers:
            if tunnel_type is not None and _get(peer, "tunnel", "type") != tunnel_type:
                continue
            value = _get(peer, *field)
            if value is None or isinstance(value, dict | tuple):
                continue
            if value in seen:
                yield (
                    ("peers", i, *field),
                    f"duplicate {what} '{value}' (peers[{seen[value]}] has it too); "
                    "each peer needs its own",
                )
            else:
                seen[value] = i

    yield from dupes(("id",), "peer id")
    yield from dupes(("sae_id",), "SAE ID")
    yield from dupes(("tunnel", "interface"), "interface", "wireguard")
    yield from dupes(("tunnel", "listen_port"), "WireGuard listen port", "wireguard")
    yield from dupes(("tunnel", "connection"), "connection", "ipsec")
    yield from dupes(("tunnel", "ppk_id"), "ppk_id", "ipsec")
    own_id, own_sae = _get(data, "gateway", "id"), _get(data, "kme", "sae_id")
    for i, peer in peers:
        if own_id is not None and _get(peer, "id") == own_id:
            yield (
                ("peers", i, "id"),
                f"'{own_id}' is this gateway's own id (gateway.id); a peer must be another gateway",
            )
        if own_sae is not None and _get(peer, "sae_id") == own_sae:
            yield (
                ("peers", i, "sae_id"),
                f"'{own_sae}' is this gateway's own SAE ID (kme.sae_id); give the peer's SAE ID",
            )
    metrics = _hostport_or_none(_get(data, "telemetry", "metrics", "listen"))
    control = _hostport_or_none(_get(data, "control", "listen")) or HostPort("0.0.0.0", 7814)  # noqa: S104
    wildcards = ("0.0.0.0", "::")  # noqa: S104
    if (
        metrics is not None
        and metrics.port == control.port
        and (metrics.host == control.host or metrics.host in wildcards or control.host in wildcards)
    ):
        yield (
            ("telemetry", "metrics", "listen"),
            f"port {metrics.port} is control.listen's too; pick another TCP port",
        )


def _hostport_or_none(value: Any) -> HostPort | None:
    try:
        parsed = _parse_hostport(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, HostPort) else None


# ------------------------------------------------------------------ YAML -> data


class _Located:
    """The composed YAML tree, kept to map error locations back to lines."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, loc: Loc, key_node: bool = False) -> tuple[yaml.Node | None, str]:
        """The node for `loc` (or the deepest existing ancestor) and the display path."""
        node = self.root
        path = ""
        for n, part in enumerate(loc):
            last = n == len(loc) - 1
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        node = k if (last and key_node) else v
                        path = f"{path}.{part}" if path else part
                        break
                else:
                    if last:  # a missing field: point at its parent mapping
                        path = f"{path}.{part}" if path else part
                    # else: a union tag, which is no key in the file
                continue
            if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    node = node.value[part]
                path = f"{path}[{part}]"
                continue
            if isinstance(part, int):
                path = f"{path}[{part}]"
            elif last:
                path = f"{path}.{part}" if path else part
        return node, path


_INDENT_PROBLEMS = ("mapping values are not allowed here", "expected <block end>",
                    "did not find expected key", "cannot start any token")


def _indentation_issue(text: str, line: int, problem: str) -> tuple[str, str] | None:
    """(enclosing field, words) for a YAML error that is bad indentation, else None."""
    lines = text.splitlines()
    if not any(p in problem for p in _INDENT_PROBLEMS) or not 0 < line <= len(lines):
        return None
    bad = lines[line - 1]
    indent = len(bad) - len(bad.lstrip(" \t"))
    # The enclosing field: the nearest earlier section (a `key:` line or a list
    # item) indented less, then its own enclosing sections.
    path: list[str] = []
    for n in range(line - 2, -1, -1):
        raw, stripped = lines[n], lines[n].strip()
        own = len(raw) - len(raw.lstrip(" "))
        if not stripped or stripped.startswith("#") or own >= indent:
            continue
        if stripped.startswith("- "):  # its index: the items before it at its indentation
            first = next((i for i in range(n - 1, -1, -1)
                          if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < own),
                         -1)
            path.insert(0, f"[{sum(x.startswith(' ' * own + '- ') for x in lines[first + 1:n])}]")
        elif stripped.endswith(":"):
            path.insert(0, stripped[:-1].strip())
        else:
            continue  # a scalar field indented less is a sibling, not a section
        indent = own
    where = "".join(f".{p}" if not p.startswith("[") else p for p in path).lstrip(".")
    inside = f"the fields of {where}" if where else "the top-level sections"
    if "\t" in bad[: len(bad) - len(bad.lstrip(" \t"))]:
        return where, f"bad indentation: a tab indents line {line}; YAML indents with spaces only"
    return where, (
        f"bad indentation: line {line} is not aligned with {inside} (YAML nests by "
        "indentation: give every field of a section the same number of spaces)"
    )


def _compose(text: str, file: str) -> tuple[Any, _Located, list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 0)
        hint = _indentation_issue(text, line, str(exc.problem or ""))
        if hint is not None:
            raise ConfigError([ConfigIssue(file, line, hint[0], hint[1], col)]) from None
        raise ConfigError(
            [ConfigIssue(file, line, "", f"YAML syntax: {exc.problem or exc}", col)]
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        msg = f"character #x{exc.character:04x} is not allowed in YAML"
        raise ConfigError([ConfigIssue(file, line, "", msg, col)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, "", f"YAML: {exc}", 0)]) from None
    finally:
        if loader is not None:
            loader.dispose()

    def build(node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            firsts: dict[str, int] = {}
            for k, v in node.value:
                line, col = k.start_mark.line + 1, k.start_mark.column + 1
                if isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge":
                    msg = "YAML merge keys (<<) are not supported; write the fields out"
                    issues.append(ConfigIssue(file, line, path, msg, col))
                    continue
                if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                    issues.append(ConfigIssue(file, line, path, "keys must be plain names", col))
                    continue
                key = k.value
                sub = f"{path}.{key}" if path else key
                if key in firsts:
                    issues.append(
                        ConfigIssue(
                            file,
                            line,
                            sub,
                            f"duplicate key '{key}' (first at line {firsts[key]}); "
                            "each key may appear once",
                            col,
                        )
                    )
                    continue
                firsts[key] = line
                out[key] = build(v, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            # Tuples: the models are frozen, and strict mode takes tuples as they are.
            return tuple(build(v, f"{path}[{i}]") for i, v in enumerate(node.value))
        scalar_loader = yaml.SafeLoader("")
        try:
            return scalar_loader.construct_object(node)
        except yaml.YAMLError as exc:
            issues.append(
                ConfigIssue(
                    file,
                    node.start_mark.line + 1,
                    path,
                    f"bad value: {exc}",
                    node.start_mark.column + 1,
                )
            )
            return None
        finally:
            scalar_loader.dispose()

    data = build(root, "") if root is not None else None
    return data, _Located(root), issues


# -------------------------------------------------------------- pydantic errors


def _allowed_keys(loc: Loc) -> list[str] | None:
    """The keys allowed in the mapping at `loc`, found by walking the models."""
    model: Any = GatewayConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            model = _model_of(model.model_fields[part].annotation)
        else:
            # a union tag: pick the member it names
            tags = {
                "wireguard": WireGuardTunnel,
                "ipsec": IpsecTunnel,
                "psk": PskAuth,
                "cert": CertAuth,
            }
            if part in tags:
                model = tags[str(part)]
            else:
                return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def _model_of(annotation: Any) -> Any:
    """The model class inside Optional[...], tuple[..., ...] and Annotated[...]."""
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if args:
        models = [m for m in (_model_of(a) for a in args) if m is not None]
        if len(models) == 1:
            return models[0]
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and getattr(annotation, "__metadata__", None) is not None:
        return _model_of(origin)
    return None


_PATTERN_WORDS = {
    _NAME_PATTERN: "must be 1-64 characters of A-Z a-z 0-9 . _ -",
    _SAE_PATTERN: "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
    _PPK_ID_PATTERN: "must be 1-255 characters without spaces",
    _PROPOSAL_PATTERN: "must be a strongSwan proposal of a-z 0-9 _ -, "
    "e.g. aes256gcm16-prfsha384-x25519",
    _TOPIC_PATTERN: "must be 1-64 characters without spaces, + or #",
}

_TYPE_WORDS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string (quote it if YAML reads it as something else)",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "is_instance_of": "has the wrong type",
}


def _message(err: Any, loc: Loc) -> tuple[str, Loc, bool]:
    """A user-fit message for one pydantic error, the loc to report and whether it is a key."""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{loc[-1]}'{hint}", loc, True
    if kind == "missing":
        return "required field missing", loc, False
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return (
            (
                f"unknown {ctx.get('discriminator', 'type').strip(chr(39))} "
                f"{ctx.get('tag')!r}; allowed: {ctx.get('expected_tags', '')}"
            ),
            (*loc, "type"),
            False,
        )
    if kind == "union_tag_not_found":
        return "required field missing: type (wireguard or ipsec)", (*loc, "type"), False
    if kind in _TYPE_WORDS:
        if kind == "is_instance_of":
            hint = {
                "HostPort": f"must be a string: {_HOSTPORT_HINT}",
                "Path": "must be a path (a string)",
            }.get(str(err.get("ctx", {}).get("class", "")), "has the wrong type")
            return hint, loc, False
        return _TYPE_WORDS[kind], loc, False
    if kind == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        words = _PATTERN_WORDS.get(pattern, f"must match {pattern}")
        return words, loc, False
    if kind == "literal_error":
        return str(err["msg"]).replace("Input should be", "must be"), loc, False
    if kind == "too_short":
        n = err.get("ctx", {}).get("min_length", 1)
        return f"needs at least {n} item(s)", loc, False
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return str(err["msg"]).replace("Input should be", "must be"), loc, False
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, "), loc, False
    return str(err["msg"]), loc, False


def _issues_from(exc: ValidationError, located: _Located, file: str) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    errors = exc.errors(include_input=False, include_url=False)
    failed = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc: Loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            len(f) > len(loc) and f[: len(loc)] == loc for f in failed
        ):
            continue  # the list is short only because its items failed: those are reported
        msg, loc, is_key = _message(err, loc)
        out.append(_issue_at(located, file, loc, msg, key_node=is_key))
    return out


def _issue_at(
    located: _Located, file: str, loc: Loc, msg: str, key_node: bool = False
) -> ConfigIssue:
    node, path = located.find(loc, key_node=key_node)
    line, col = (
        (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 0)
    )
    return ConfigIssue(file, line, path, msg, col)


# ----------------------------------------------------------------------- public


def parse_config(
    text: str, file: str = "<config>", *, base_dir: Path | None = None, check_files: bool = True
) -> GatewayConfig:
    """Validate YAML text; `file` names it in errors, `base_dir` anchors relative paths."""
    data, located, issues = _compose(text, file)
    if data is None:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    1,
                    "",
                    "the config is empty; it needs at least the gateway: and kme: sections",
                    1,
                )
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                _issue_at(
                    located,
                    file,
                    (),
                    "the config must be a mapping with the "
                    "sections gateway, control, kme, peers, telemetry",
                )
            ]
        )
    context = {"base_dir": base_dir, "check_files": check_files}
    issues.extend(_issue_at(located, file, loc, msg) for loc, msg in _cross_checks(data))
    try:
        cfg = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        issues.extend(_issues_from(exc, located, file))
        raise ConfigError(_sorted(issues)) from None
    if issues:
        raise ConfigError(_sorted(issues))
    return cfg


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda i: (i.line, i.column, i.field))


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> GatewayConfig:
    """Load and validate the gateway config at `path`; raises `ConfigError` listing every problem.

    `check_files=False` skips the checks that files exist and have safe modes (for
    configs whose files are made later); paths are still resolved.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(p), 0, "", "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            [ConfigIssue(str(p), 0, "", f"cannot read the config: {reason}")]
        ) from None
    return parse_config(text, str(p), base_dir=p.resolve().parent, check_files=check_files)


def changed_sections(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """Top-level sections other than `peers` that differ (a reload cannot apply them live
    unless the daemon supports it; it should say which ones it ignored)."""
    return tuple(
        name
        for name in type(old).model_fields
        if name != "peers" and getattr(old, name) != getattr(new, name)
    )


class PeerDiff(NamedTuple):
    """What a reload changes: peers to start, to stop, and to restart with new settings."""

    added: tuple[PeerConfig, ...]
    removed: tuple[PeerConfig, ...]
    changed: tuple[PeerConfig, ...]


def diff_peers(old: GatewayConfig, new: GatewayConfig) -> PeerDiff:
    """Compare peers by id; `changed` holds the new settings of peers whose settings differ."""
    before = {p.id: p for p in old.peers}
    after = {p.id: p for p in new.peers}
    return PeerDiff(
        added=tuple(p for i, p in after.items() if i not in before),
        removed=tuple(p for i, p in before.items() if i not in after),
        changed=tuple(p for i, p in after.items() if i in before and before[i] != p),
    )
