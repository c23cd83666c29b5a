"""What both WireGuard drivers share: their settings, key and endpoint parsing.

The settings mirror the fields of the config's `WireGuardTunnel` model as
plain values, so the drivers do not depend on the config code.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.tunnels.base import TunnelDriver, TunnelError

__all__ = [
    "KEY_LEN",
    "WireGuardSettings",
    "decode_public_key",
    "make_wireguard_driver",
    "read_private_key",
    "resolve_endpoint",
    "settings_from",
]

#: Every WireGuard key (private, public, preshared) is 32 bytes.
KEY_LEN = 32
#: WireGuard's REJECT_AFTER_TIME: session keys older than this carry no traffic.
REJECT_AFTER_TIME_S = 180.0

Driver = Literal["userspace", "kernel"]
Manage = Literal["full", "psk-only"]


@dataclass(frozen=True, slots=True)
class WireGuardSettings:
    """One WireGuard tunnel to one peer (fields as in the config's WireGuardTunnel)."""

    interface: str
    peer_public_key: str  # base64
    driver: Driver = "userspace"
    manage: Manage = "full"
    private_key_file: Path | None = None
    listen_port: int | None = None
    addresses: tuple[str, ...] = ()
    endpoint: str | None = None  # "host:port", "[v6]:port"; None: learnt from the peer
    allowed_ips: tuple[str, ...] = ()
    persistent_keepalive_s: int | None = None
    wireguard_go: str = "wireguard-go"
    #: Namespace the interface lives in (None: the daemon's own). Lets one
    #: process drive tunnels of several namespaces (tests, the demo).
    netns: str | None = None
    #: Seconds to wait for wireguard-go's UAPI socket and for each UAPI reply.
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.interface or len(self.interface) > 15 or "/" in self.interface:
            raise TunnelError(f"interface name {self.interface!r} is not a valid ifname")
        decode_public_key(self.peer_public_key)
        if self.manage == "full" and self.private_key_file is None:
            raise TunnelError(f"{self.interface}: manage: full needs private_key_file")
        for cidr in (*self.addresses, *self.allowed_ips):
            try:
                ipaddress.ip_interface(cidr)
            except ValueError as exc:
                raise TunnelError(f"{self.interface}: {cidr!r} is not an address/prefix") from exc


def settings_from(model: Any, netns: str | None = None) -> WireGuardSettings:
    """Build settings from an object with the WireGuardTunnel fields (duck-typed)."""
    pk_file = getattr(model, "private_key_file", None)
    return WireGuardSettings(
        interface=model.interface,
        peer_public_key=model.peer_public_key,
        driver=getattr(model, "driver", "userspace"),
        manage=getattr(model, "manage", "full"),
        private_key_file=None if pk_file is None else Path(pk_file),
        listen_port=getattr(model, "listen_port", None),
        addresses=tuple(str(a) for a in getattr(model, "addresses", ()) or ()),
        endpoint=getattr(model, "endpoint", None),
        allowed_ips=tuple(str(a) for a in getattr(model, "allowed_ips", ()) or ()),
        persistent_keepalive_s=getattr(model, "persistent_keepalive_s", None),
        wireguard_go=str(getattr(model, "wireguard_go", "wireguard-go")),
        netns=netns,
    )


def decode_public_key(b64: str) -> bytes:
    """A base64 WireGuard public key as 32 bytes (public: may appear in errors)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TunnelError(f"peer public key {b64!r} is not base64") from exc
    if len(raw) != KEY_LEN:
        raise TunnelError(f"peer public key {b64!r} is {len(raw)} bytes, not {KEY_LEN}")
    return raw


def read_private_key(path: Path) -> bytes:
    """The 32-byte private key from a `wg genkey` file that only its owner can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TunnelError(f"cannot open private key file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TunnelError(
                f"private key file {path} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); it must be 0600"
            )
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_LEN:
        # Never echo the content: it is (or resembles) a secret.
        raise TunnelError(f"private key file {path} does not hold a base64 32-byte key")
    return raw


def check_not_own_key(private: bytes, peer_public: bytes, ifname: str) -> None:
    """WireGuard silently ignores a peer whose key is the interface's own; say so."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    own = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    if own == peer_public:
        raise TunnelError(
            f"{ifname}: peer_public_key is this interface's own public key "
            "(the two sites' keys are swapped or copied)"
        )


def check_key(key: bytes, what: str, ifname: str) -> None:
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_LEN:
        size = len(key) if isinstance(key, bytes | bytearray | memoryview) else "?"
        raise TunnelError(f"{ifname}: {what} must be {KEY_LEN} bytes, got {size}")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port_s = endpoint.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise TunnelError(f"endpoint {endpoint!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise TunnelError(f"endpoint {endpoint!r}: write an IPv6 host as [addr]:port")
    return host, int(port_s)


def resolve_endpoint(endpoint: str) -> tuple[str, int]:
    """Resolve 'host:port' to (IP literal, port); blocking (run in a thread)."""
    host, port = split_endpoint(endpoint)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TunnelError(f"endpoint host {host!r} does not resolve: {exc.strerror}") from exc
    return str(infos[0][4][0]), port


def format_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def routable(prefixes: Sequence[str]) -> list[str]:
    """Allowed IPs to route through the interface; default routes are left out
    because routing the underlay into the tunnel needs policy routing (as
    wg-quick does), which is the operator's choice, not ours."""
    out = []
    for cidr in prefixes:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.prefixlen != 0:
            out.append(str(net))
    return out


def _ipr(netns: str | None) -> Any:
    from pyroute2 import IPRoute, NetNS

    return IPRoute() if netns is None else NetNS(netns)


def configure_interface(
    ifname: str, netns: str | None, addresses: Sequence[str], allowed_ips: Sequence[str],
) -> None:
    """Addresses, link up, and a route per allowed prefix (blocking: run in a thread).

    Idempotent, so that a restarted daemon can adopt an interface it left up.
    """
    import errno

    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise TunnelError(f"interface {ifname} does not exist")
        idx = found[0]
        try:
            for cidr in addresses:
                iface = ipaddress.ip_interface(cidr)
                try:
                    ipr.addr("add", index=idx, address=str(iface.ip),
                             prefixlen=iface.network.prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
            ipr.link("set", index=idx, state="up")
            for dst in routable(allowed_ips):
                try:
                    ipr.route("add", dst=dst, oif=idx)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
        except NetlinkError as exc:
            raise TunnelError(f"{ifname}: netlink: {os.strerror(exc.code)}") from exc


def delete_interface(ifname: str, netns: str | None) -> None:
    """Delete the link if present (blocking: run in a thread)."""
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])




def make_wireguard_driver(settings: WireGuardSettings) -> TunnelDriver:
    """The driver for `settings.driver`: "userspace" (UAPI) or "kernel" (netlink)."""
    # Imported here: both driver modules import this one.
    if settings.driver == "kernel":
        from gateway.tunnels.wireguard_kernel import WireGuardKernelDriver

        return WireGuardKernelDriver(settings)
    if settings.driver == "userspace":
        from gateway.tunnels.wireguard_uapi import WireGuardUapiDriver

        return WireGuardUapiDriver(settings)
    raise TunnelError(f"unknown WireGuard driver {settings.driver!r}")
