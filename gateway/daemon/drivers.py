"""Config tunnel section -> a tunnel driver."""

from __future__ import annotations

from dataclasses import replace

from gateway.config import IpsecTunnel, PeerConfig, WireGuardTunnel
from gateway.tunnels.base import TunnelDriver


def make_driver(peer: PeerConfig, initiator: bool) -> TunnelDriver:
    tunnel = peer.tunnel
    if isinstance(tunnel, WireGuardTunnel):
        from gateway.tunnels.wireguard_common import make_wireguard_driver, settings_from

        settings = settings_from(tunnel)
        # The config holds a parsed HostPort; the driver takes the text form.
        endpoint = str(tunnel.endpoint) if tunnel.endpoint is not None else None
        return make_wireguard_driver(replace(settings, endpoint=endpoint))
    if isinstance(tunnel, IpsecTunnel):
        from gateway.tunnels.strongswan import make_strongswan_driver

        return make_strongswan_driver(tunnel, initiator=initiator)
    raise ValueError(f"peer {peer.id}: unknown tunnel type")  # unreachable: config validated

