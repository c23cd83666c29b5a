"""The appliance firewall: an nftables ruleset, default deny, made from gateway.yaml.

It admits only what the config names: the control channel from and to the
configured peers, WireGuard from their endpoints (or on the listen port where a
peer roams), IKE and ESP with the IPsec peers, the traffic their tunnels carry,
the metrics address, and outbound HTTPS (or MQTT) to the configured KMEs and
broker. Everything else is dropped, in and out, and dropped input is logged at a
bounded rate. Pure: host names are resolved by the caller's `resolve`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from gateway.config import GatewayConfig
from gateway.config.models_tunnels import IpsecTunnel, WireGuardTunnel

__all__ = ["ruleset"]

Resolver = Callable[[str], list[str]]
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network

# Without these IPv6 does not work at all (neighbour discovery), and PMTU breaks.
_ICMPV6 = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert",
           "packet-too-big")


def _nets(hosts: Iterable[str], resolve: Resolver) -> list[_Net]:
    out: list[_Net] = []
    for host in hosts:
        host = host.strip("[]")
        try:
            out.append(ipaddress.ip_network(host, strict=False))
        except ValueError:
            out.extend(ipaddress.ip_network(a) for a in resolve(host))
    return out


def _match(direction: str, nets: Iterable[_Net], rest: str) -> list[str]:
    """One rule per address family: `ip saddr { ... } REST`."""
    lines = []
    for fam, version in (("ip", 4), ("ip6", 6)):
        chosen = sorted({str(n) for n in nets if n.version == version})
        if chosen:
            lines.append(f"{fam} {direction} {{ {', '.join(chosen)} }} {rest}")
    return lines


def _wireguard(t: WireGuardTunnel, resolve: Resolver) -> tuple[list[str], list[str], list[str]]:
    inp: list[str] = []
    out: list[str] = []
    fwd: list[str] = []
    ep = [] if t.endpoint is None else _nets([t.endpoint.host], resolve)
    if t.listen_port is not None:
        if ep:
            inp += _match("saddr", ep, f"udp dport {t.listen_port} accept")
        else:  # a roaming peer: WireGuard answers nothing unauthenticated
            inp.append(f"udp dport {t.listen_port} accept")
            out.append(f"udp sport {t.listen_port} accept")
    if t.endpoint is not None:
        out += _match("daddr", ep, f"udp dport {t.endpoint.port} accept")
    inner = list(t.allowed_ips)
    inp += _match("saddr", inner, f'iifname "{t.interface}" accept')
    out += _match("daddr", inner, f'oifname "{t.interface}" accept')
    fwd += _match("saddr", inner, f'iifname "{t.interface}" accept')
    fwd += _match("daddr", inner, f'oifname "{t.interface}" accept')
    return inp, out, fwd


def _ipsec(t: IpsecTunnel, resolve: Resolver) -> tuple[list[str], list[str], list[str]]:
    peers = [a for a in t.remote_addrs if a != "%any"]
    nets = _nets(peers, resolve)
    inp: list[str] = []
    out: list[str] = []
    fwd: list[str] = []
    if nets:
        inp += _match("saddr", nets, "udp dport { 500, 4500 } accept")
        inp += _match("saddr", nets, "meta l4proto esp accept")
        out += _match("daddr", nets, "udp dport { 500, 4500 } accept")
        out += _match("daddr", nets, "meta l4proto esp accept")
    else:  # %any: IKE authenticates every peer itself
        inp += ["udp dport { 500, 4500 } accept", "meta l4proto esp accept"]
        out += ["udp sport { 500, 4500 } accept", "meta l4proto esp accept"]
    remote = _nets(t.remote_ts, resolve)
    # Inner traffic only as IPsec: decapsulated in, and out only where a policy
    # transforms it (never in clear when the SA is missing).
    inp += _match("saddr", remote, "meta ipsec exists accept")
    out += _match("daddr", remote, "rt ipsec exists accept")
    if t.xfrm_interface is not None:  # route-based: what the XFRM interface carries
        name = t.xfrm_interface.name
        routed = [*remote, *t.xfrm_interface.routes]
        inp += _match("saddr", routed, f'iifname "{name}" accept')
        out += _match("daddr", routed, f'oifname "{name}" accept')
        fwd += _match("saddr", routed, f'iifname "{name}" accept')
        fwd += _match("daddr", routed, f'oifname "{name}" accept')
    fwd += _match("saddr", remote, "meta ipsec exists accept")
    fwd += _match("daddr", remote, "rt ipsec exists accept")
    return inp, out, fwd


def _url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443


def ruleset(cfg: GatewayConfig, resolve: Resolver) -> str:
    """The nft script (`nft -f`) for this config; replaces the whole ruleset."""
    inp = ["iif lo accept", "ct state established,related accept", "ct state invalid drop"]
    out = ["oif lo accept", "ct state established,related accept", "ct state invalid drop"]
    fwd = ["ct state established,related accept", "ct state invalid drop"]
    for rules in (inp, out):
        rules.append(f"icmpv6 type {{ {', '.join(_ICMPV6)} }} accept")
    listen = cfg.control.listen
    for peer in cfg.peers:
        hosts = _nets([peer.control.host], resolve)
        inp += _match("saddr", hosts, f"tcp dport {listen.port} accept")
        out += _match("daddr", hosts, f"tcp dport {peer.control.port} accept")
        if isinstance(peer.tunnel, WireGuardTunnel):
            i, o, f = _wireguard(peer.tunnel, resolve)
        else:
            i, o, f = _ipsec(peer.tunnel, resolve)
        inp += i
        out += o
        fwd += f
    for ep in cfg.kme.endpoints:
        host, port = _url_host_port(ep.url)
        out += _match("daddr", _nets([host], resolve), f"tcp dport {port} accept")
    telemetry = cfg.telemetry
    if telemetry.metrics is not None:
        m = telemetry.metrics.listen
        if m.host in ("0.0.0.0", "::"):  # noqa: S104 -- a wildcard listen, as configured
            inp.append(f"tcp dport {m.port} accept")
        else:
            inp += _match("daddr", _nets([m.host], resolve), f"tcp dport {m.port} accept")
    if telemetry.mqtt is not None:
        mq = telemetry.mqtt
        out += _match("daddr", _nets([mq.host], resolve), f"tcp dport {mq.port} accept")
    drop_log = 'limit rate 10/minute log prefix "qsgw-fw drop: " level info'
    inp.append(drop_log)
    out.append(drop_log.replace("drop: ", "drop out: "))
    text = ["#!/usr/sbin/nft -f",
            f"# made by `qsgw firewall` for gateway {cfg.gateway.id}: default deny",
            "flush ruleset", "table inet qsgw {"]
    for name, hook, rules in (("input", "input", inp), ("forward", "forward", fwd),
                              ("output", "output", out)):
        text.append(f"  chain {name} {{")
        text.append(f"    type filter hook {hook} priority filter; policy drop;")
        text += [f"    {r}" for r in rules]
        text.append("  }")
    text.append("}")
    return "\n".join(text) + "\n"
