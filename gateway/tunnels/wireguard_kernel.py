"""WireGuard in the Linux kernel, through pyroute2's WireGuard generic netlink.

Same behaviour as the UAPI driver (see wireguard_uapi.py); only the transport
differs. pyroute2 takes keys as base64 strings; they are built here and never
logged. Netlink errors carry only an errno.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import secrets
import time
from typing import Any

from gateway.tunnels import wireguard_common as wgc
from gateway.tunnels.base import TunnelError, TunnelHealth
from gateway.tunnels.wireguard_common import WireGuardSettings

__all__ = ["WireGuardKernelDriver"]

log = logging.getLogger(__name__)


def _value(nla: Any) -> Any:
    """pyroute2 returns key/time attributes as nested nla objects; unwrap them."""
    if nla is not None and hasattr(nla, "get") and nla.get("value") is not None:
        return nla.get("value")
    return nla


class WireGuardKernelDriver:
    """A `TunnelDriver` for one peer of a kernel WireGuard interface."""

    def __init__(self, settings: WireGuardSettings) -> None:
        self.settings = settings
        self.ifname = settings.interface
        self._peer_pk = wgc.decode_public_key(settings.peer_public_key)
        self._peer_b64 = base64.b64encode(self._peer_pk).decode()

    def __repr__(self) -> str:
        return f"WireGuardKernelDriver({self.ifname!r}, manage={self.settings.manage!r})"

    # -- netlink (blocking; always called through asyncio.to_thread) -------

    def _wg_set(self, **kw: Any) -> None:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with WireGuard(netns=self.settings.netns) as wg:
                wg.set(self.ifname, **kw)
        except NetlinkError as exc:
            raise TunnelError(f"{self.ifname}: wireguard netlink: {os.strerror(exc.code)}") from exc
        except ValueError as exc:  # pyroute2's key checks; its texts hold no key
            raise TunnelError(f"{self.ifname}: rejected by pyroute2: {exc}") from exc

    def _peer(self) -> dict[str, Any] | None:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with WireGuard(netns=self.settings.netns) as wg:
                msgs = list(wg.info(self.ifname))
        except NetlinkError as exc:
            raise TunnelError(f"{self.ifname}: wireguard netlink: {os.strerror(exc.code)}") from exc
        for msg in msgs:
            for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
                pk = _value(p.get_attr("WGPEER_A_PUBLIC_KEY"))
                if pk is None or base64.b64decode(pk) != self._peer_pk:
                    continue
                hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                ep = p.get_attr("WGPEER_A_ENDPOINT")
                return {
                    "endpoint": None if ep is None else (ep.get("addr"), ep.get("port")),
                    "allowed_ips": [a.get("addr") for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or ()],
                    "keepalive": p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
                    "handshake": None if hs is None or not hs.get("tv_sec")
                    else hs.get("tv_sec") + hs.get("tv_nsec", 0) / 1e9,
                    "rx": p.get_attr("WGPEER_A_RX_BYTES") or 0,
                    "tx": p.get_attr("WGPEER_A_TX_BYTES") or 0,
                }
        return None

    def _create_link(self) -> bool:
        from pyroute2 import IPRoute, NetNS
        from pyroute2.netlink.exceptions import NetlinkError

        s = self.settings
        with IPRoute() if s.netns is None else NetNS(s.netns) as ipr:
            if ipr.link_lookup(ifname=self.ifname):
                return False
            try:
                ipr.link("add", ifname=self.ifname, kind="wireguard")
            except NetlinkError as exc:
                if exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise TunnelError(
                        f"{self.ifname}: kernel has no wireguard module (modprobe wireguard)"
                    ) from exc
                raise TunnelError(f"{self.ifname}: cannot create: {os.strerror(exc.code)}") from exc
        return True

    def _peer_spec(self, endpoint: tuple[str, int] | None, allowed: list[str] | None,
                   keepalive: int | None) -> dict[str, Any]:
        s = self.settings
        spec: dict[str, Any] = {"public_key": self._peer_b64, "replace_allowed_ips": True,
                                "allowed_ips": list(s.allowed_ips if allowed is None else allowed)}
        if endpoint is None and s.endpoint is not None:
            endpoint = wgc.resolve_endpoint(s.endpoint)
        if endpoint is not None:
            spec["endpoint_addr"], spec["endpoint_port"] = endpoint
        spec["persistent_keepalive"] = (
            keepalive if keepalive is not None else s.persistent_keepalive_s or 0
        )
        return spec

    @staticmethod
    def _random_psk() -> str:
        return base64.b64encode(secrets.token_bytes(wgc.KEY_LEN)).decode()

    def _start(self) -> None:
        s = self.settings
        if s.manage == "psk-only":
            if self._peer() is None:
                raise TunnelError(f"{self.ifname}: peer {s.peer_public_key} is not configured")
            return
        assert s.private_key_file is not None  # checked by WireGuardSettings
        raw_private = wgc.read_private_key(s.private_key_file)
        wgc.check_not_own_key(raw_private, self._peer_pk, self.ifname)
        fresh = self._create_link()
        private = base64.b64encode(raw_private).decode()
        peer = self._peer_spec(None, None, None)
        if fresh:  # fail closed until the first epoch key (as in the UAPI driver)
            peer["preshared_key"] = self._random_psk()
        self._wg_set(private_key=private, listen_port=s.listen_port, peer=peer)
        wgc.configure_interface(self.ifname, s.netns, s.addresses, s.allowed_ips)

    def _block(self) -> None:
        # Removing the peer drops its session keys at once; a random PSK alone
        # would leave them working for up to 3 minutes (see wireguard_uapi).
        current = self._peer()
        if current is None and self.settings.manage == "psk-only":
            return
        self._wg_set(peer={"public_key": self._peer_b64, "remove": True})
        peer = self._peer_spec(
            None if current is None else current["endpoint"],
            None if current is None else current["allowed_ips"],
            None if current is None else current["keepalive"],
        )
        peer["preshared_key"] = self._random_psk()
        self._wg_set(peer=peer)

    # -- TunnelDriver -----------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def install_key(self, epoch: int, key: bytes) -> None:
        wgc.check_key(key, "epoch key", self.ifname)
        psk = base64.b64encode(key).decode()
        await asyncio.to_thread(self._wg_set, peer={
            "public_key": self._peer_b64, "update_only": True, "preshared_key": psk,
        })
        log.info("wireguard %s: epoch %d key installed", self.ifname, epoch)

    async def activate(self, epoch: int) -> None:
        return None

    async def handshake_now(self) -> None:
        """Start a handshake now, as the UAPI driver does: the kernel sends a keepalive
        when the persistent keepalive goes from off to on (one set per step)."""
        def kick() -> None:
            current = self._peer()
            if current is None or current["endpoint"] is None:
                return  # no endpoint: only the peer can start it (a roaming peer)
            keep = (current["keepalive"] if self.settings.manage == "psk-only"
                    else self.settings.persistent_keepalive_s or 0)
            for interval in (0, 1, keep):
                self._wg_set(peer={"public_key": self._peer_b64, "update_only": True,
                                   "persistent_keepalive": interval})
        await asyncio.to_thread(kick)

    async def block(self) -> None:
        await asyncio.to_thread(self._block)
        log.warning("wireguard %s blocked: peer session dropped, random PSK set", self.ifname)

    async def health(self) -> TunnelHealth:
        try:
            peer = await asyncio.to_thread(self._peer)
        except TunnelError as exc:
            return TunnelHealth(up=False, detail=str(exc))
        if peer is None:
            return TunnelHealth(up=False, detail=f"{self.ifname}: peer not configured")
        if peer["handshake"] is None:
            return TunnelHealth(up=False, detail=f"{self.ifname}: no handshake yet",
                                rx_bytes=peer["rx"], tx_bytes=peer["tx"])
        age = max(0.0, time.time() - float(peer["handshake"]))
        up = age < wgc.REJECT_AFTER_TIME_S
        return TunnelHealth(up=up, detail=f"{self.ifname}: last handshake {age:.0f} s ago",
                            last_handshake_age_s=age, rx_bytes=peer["rx"], tx_bytes=peer["tx"])

    async def stop(self, keep_tunnel: bool) -> None:
        if self.settings.manage == "full" and not keep_tunnel:
            await asyncio.to_thread(wgc.delete_interface, self.ifname, self.settings.netns)
