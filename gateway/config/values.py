"""Config value types and parsers: host:port, CIDRs, paths, key files, names, and the model base.

Each parser says what is allowed; a path that looks like key material is refused
without echoing it. File checks (existence, 0600, owner) run only when the
validation context asks for them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    ValidationInfo,
    field_validator,
)

from gateway.fsguard import FileSafetyError, check_dir

IDENTITY_KEY_FILES = ("ed25519.key", "mldsa65.key")


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
