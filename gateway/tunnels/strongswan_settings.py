"""strongSwan connection model: IpsecSettings, the list-sas view, the VICI conn message.

Pure: no VICI session here. The driver (strongswan.py) loads what this builds.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.tunnels.base import TunnelError

Manage = Literal["full", "ppk-only"]
StartAction = Literal["none", "trap", "start"]

#: RFC 8784 asks for PPKs with at least 256 bits of entropy.
MIN_PPK_BYTES = 32
MAX_PPK_BYTES = 1024
_DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519",)
_DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)
#: manage=full loads each tunnel twice, as CONNECTION and CONNECTION + this: a
#: rotation initiates a new IKE SA on the twin that carries no SA while the old one
#: lives, and deletes the old one only once the new one carries the CHILD_SA.
TWIN_SUFFIX = "-mbb"


@dataclass(frozen=True, slots=True)
class IpsecSettings:
    """What the driver needs to know about one IKEv2 tunnel.

    `connection` is the VICI connection name (and of its one CHILD_SA unless
    `child` is set). `manage="ppk-only"` leaves the connection to swanctl.conf
    and only rotates the PPK. IKE authentication is either a PSK read from
    `psk_file` or X.509 (`cert_file`, `key_file`, `ca_file`).
    """

    #: A path, or a URI as in the config: unix:///path or tcp://host:port.
    vici_socket: Path | str
    connection: str
    ppk_id: str
    manage: Manage = "full"
    child: str | None = None
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    ike_proposals: tuple[str, ...] = _DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = _DEFAULT_ESP_PROPOSALS
    local_id: str | None = None
    remote_id: str | None = None
    psk_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    ppk_required: bool = True
    initiator: bool = True
    start_action: StartAction = "none"
    #: Route-based: the XFRM interface's if_id, name, addresses and routes.
    if_id: int | None = None
    xfrm_name: str | None = None
    xfrm_addresses: tuple[str, ...] = ()
    xfrm_routes: tuple[str, ...] = ()
    #: Bound on one VICI operation that waits for the peer (initiate, reauth).
    timeout_s: float = 10.0

    @property
    def child_name(self) -> str:
        return self.child or self.connection

    @property
    def conn_names(self) -> tuple[str, ...]:
        """The VICI connections of this tunnel: the configured one, and with
        manage=full its make-before-break twin."""
        if self.manage == "full":
            return (self.connection, self.connection + TWIN_SUFFIX)
        return (self.connection,)

    def twin_of(self, name: str) -> str:
        """The other connection of the pair (the name itself for ppk-only)."""
        names = self.conn_names
        return names[1 - names.index(name)] if len(names) == 2 and name in names else name

    def vici_address(self) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
        """The socket family and address of charon's VICI endpoint."""
        value = str(self.vici_socket)
        if value.startswith("tcp://"):
            host, _, port = value.removeprefix("tcp://").rpartition(":")
            if not host or not port.isdigit():
                raise TunnelError(f"ipsec {self.connection}: bad VICI URI {value!r}")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
        return socket.AF_UNIX, value.removeprefix("unix://")

    def validate(self) -> None:
        """Raise TunnelError for settings charon would refuse or misuse."""
        if not self.connection or not self.ppk_id:
            raise TunnelError("ipsec: connection and ppk_id must not be empty")
        if self.manage not in ("full", "ppk-only"):
            raise TunnelError(f"ipsec {self.connection}: manage must be 'full' or 'ppk-only'")
        if self.timeout_s <= 0:
            raise TunnelError(f"ipsec {self.connection}: timeout_s must be positive")
        self.vici_address()
        if self.manage == "ppk-only":
            return
        missing = [
            name
            for name in ("local_addrs", "remote_addrs", "local_ts", "remote_ts", "ike_proposals")
            if not getattr(self, name)
        ]
        if missing:
            raise TunnelError(
                f"ipsec {self.connection}: manage=full needs {', '.join(missing)}"
            )
        cert_parts = (self.cert_file, self.key_file, self.ca_file)
        if self.psk_file is not None:
            if any(p is not None for p in cert_parts):
                raise TunnelError(
                    f"ipsec {self.connection}: give either psk_file or cert_file/key_file/ca_file"
                )
        elif not all(p is not None for p in cert_parts):
            raise TunnelError(
                f"ipsec {self.connection}: manage=full needs psk_file or "
                "cert_file, key_file and ca_file"
            )

    @classmethod
    def from_config(cls, model: Any, *, initiator: bool | None = None) -> IpsecSettings:
        """Build from the config's `IpsecTunnel` model (or anything with those attributes)."""

        def get(name: str, default: Any = None) -> Any:
            return getattr(model, name, default)

        def paths(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value is not None else None

        def strs(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
            value = get(name)
            if value is None:
                return default
            if isinstance(value, str):
                return (value,)
            return tuple(str(v) for v in value)

        auth = get("auth")
        src = auth if auth is not None else model

        def auth_get(name: str) -> Any:
            return getattr(src, name, None) if auth is not None else get(name)

        def auth_path(name: str) -> Path | None:
            value = auth_get(name)
            return Path(value) if value is not None else None

        xfrm = get("xfrm_interface")
        return cls(
            if_id=None if xfrm is None else int(xfrm.if_id),
            xfrm_name=None if xfrm is None else str(xfrm.name),
            xfrm_addresses=() if xfrm is None else tuple(str(a) for a in xfrm.addresses),
            xfrm_routes=() if xfrm is None else tuple(str(r) for r in xfrm.routes),
            vici_socket=str(get("vici_socket", "unix:///var/run/charon.vici")),
            connection=str(get("connection")),
            ppk_id=str(get("ppk_id")),
            manage=get("manage", "full"),
            child=get("child"),
            local_addrs=strs("local_addrs"),
            remote_addrs=strs("remote_addrs"),
            local_ts=strs("local_ts"),
            remote_ts=strs("remote_ts"),
            ike_proposals=strs("ike_proposals", _DEFAULT_IKE_PROPOSALS),
            esp_proposals=strs("esp_proposals", _DEFAULT_ESP_PROPOSALS),
            local_id=auth_get("local_id") or get("local_id"),
            remote_id=auth_get("remote_id") or get("remote_id"),
            psk_file=auth_path("psk_file"),
            cert_file=auth_path("cert_file"),
            key_file=auth_path("key_file"),
            ca_file=auth_path("ca_file"),
            ppk_required=bool(get("ppk_required", True)),
            initiator=bool(get("initiator", True)) if initiator is None else initiator,
            start_action=get("start_action", "none") or "none",
        )


@dataclass(slots=True)
class IkeSa:
    """The part of a list-sas entry the driver looks at (no keys in there)."""

    uniqueid: str
    state: str
    ppk: bool
    spis: tuple[str, str]
    established_s: float | None
    child_installed: bool
    #: uniqueids of the INSTALLED CHILD_SAs.
    installed_children: frozenset[str]
    bytes_in: int
    bytes_out: int
    #: The connection it belongs to (one of IpsecSettings.conn_names).
    name: str = ""

    @classmethod
    def parse(cls, sa: Mapping[str, Any], name: str = "") -> IkeSa:
        def text(key: str, default: str = "") -> str:
            value = sa.get(key)
            return value.decode() if isinstance(value, bytes) else default

        children: Mapping[str, Any] = sa.get("child-sas") or {}
        installed = False
        installed_ids: set[str] = set()
        bytes_in = bytes_out = 0
        for child in children.values():
            if child.get("state") == b"INSTALLED":
                installed = True
                installed_ids.add(as_text(child.get("uniqueid", b"")))
            bytes_in += int(child.get("bytes-in", b"0"))
            bytes_out += int(child.get("bytes-out", b"0"))
        established = text("established")
        return cls(
            uniqueid=text("uniqueid"),
            state=text("state"),
            ppk=text("ppk") == "yes",
            spis=(text("initiator-spi"), text("responder-spi")),
            established_s=float(established) if established else None,
            child_installed=installed,
            installed_children=frozenset(installed_ids),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            name=name,
        )


@dataclass(slots=True)
class Secret:
    """The current PPK, kept to reload it into a restarted charon."""

    epoch: int
    value: bytearray = field(repr=False)

    def wipe(self) -> None:
        for i in range(len(self.value)):
            self.value[i] = 0


def read_secret_file(path: Path, what: str, conn: str) -> bytes:
    """File contents; errors name the file, never its contents."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TunnelError(f"ipsec {conn}: cannot read {what} {path}: {exc.strerror}") from None
    data = data.strip()
    if not data:
        raise TunnelError(f"ipsec {conn}: {what} {path} is empty")
    return data


def conn_message(s: IpsecSettings, name: str | None = None) -> dict[str, Any]:
    """The VICI load-conn message of one of a manage=full tunnel's connections
    (`name`: one of `s.conn_names`, default the configured one; certificates read now)."""
    name = name or s.connection
    if s.psk_file is not None:
        local: dict[str, Any] = {"auth": "psk"}
        remote: dict[str, Any] = {"auth": "psk"}
        if s.local_id:
            local["id"] = s.local_id
        if s.remote_id:
            remote["id"] = s.remote_id
    else:
        assert s.cert_file is not None and s.ca_file is not None
        # VICI takes the certificates themselves (PEM or DER), not paths.
        cert = read_secret_file(s.cert_file, "cert_file", s.connection)
        ca = read_secret_file(s.ca_file, "ca_file", s.connection)
        local = {"auth": "pubkey", "certs": [cert]}
        remote = {"auth": "pubkey", "cacerts": [ca]}
        if s.local_id:
            local["id"] = s.local_id
        if s.remote_id:
            remote["id"] = s.remote_id
    child: dict[str, Any] = {
        "local_ts": list(s.local_ts),
        "remote_ts": list(s.remote_ts),
        "esp_proposals": list(s.esp_proposals),
        "start_action": s.start_action,
        # The peer deleting the CHILD_SA is reported, not silently redone:
        # the daemon decides with a fresh key.
        "close_action": "none",
        "dpd_action": "clear",
    }
    if s.if_id is not None:  # route-based: policies and SAs bound to the XFRM interface
        child["if_id_in"] = child["if_id_out"] = str(s.if_id)
    twin = name != s.connection
    return {
        name: {
            "version": "2",
            "local_addrs": list(s.local_addrs),
            "remote_addrs": list(s.remote_addrs),
            "proposals": list(s.ike_proposals),
            "ppk_id": s.ppk_id,
            "ppk_required": "yes" if s.ppk_required else "no",
            # Rotation is qsgw's job: charon's own reauth timer is off and
            # IKE rekeys (which keep the PPK) are rare.
            "reauth_time": "0",
            "rekey_time": "4h",
            # charon reuses an IKE SA whose config equals the one initiated (the
            # name is not compared): the twin's jitter differs, so initiating
            # it makes a new IKE SA beside the old one.
            "rand_time": "601s" if twin else "600s",
            "dpd_delay": "10s",
            # Both ends keep the old IKE SA beside the new one until the DELETE:
            # charon sends INITIAL_CONTACT (which makes a peer with "no" drop the
            # others) only when it holds no IKE SA with the peer, as after a
            # restart, where dropping the stale ones is right.
            "unique": "no",
            "local": local,
            "remote": remote,
            "children": {s.child_name: child},
        }
    }


def psk_owners(s: IpsecSettings) -> list[str]:
    # Without configured IDs charon identifies both ends by IP address;
    # the PSK is bound to those so that it serves this tunnel only.
    local = [s.local_id] if s.local_id else [a for a in s.local_addrs if concrete(a)]
    remote = [s.remote_id] if s.remote_id else [a for a in s.remote_addrs if concrete(a)]
    return [*local, *remote]


def concrete(addr: str) -> bool:
    """An IP address (charon's default identity), not %any, a range or a name."""
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
