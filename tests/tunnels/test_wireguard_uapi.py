"""The wireguard-go (UAPI) driver between two sites in namespaces."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.tunnels.base import TunnelDriver, TunnelError
from gateway.tunnels.wireguard_common import make_wireguard_driver
from gateway.tunnels.wireguard_uapi import (
    PARSE_IN_THREAD_LINES,
    UAPI_SOCKET_DIR,
    UapiClient,
    WireGuardUapiDriver,
)
from qsgw_lab.netns import NetnsLab

from .conftest import (
    TUNNEL4,
    TUNNEL6,
    UNDERLAY6,
    WG_PORT,
    Site,
    b64,
    drop_session,
    started_pair,
    wg_show,
)

# A first handshake after a failed one waits for WireGuard's retry timer (5 s + jitter).
PING_TIMEOUT_S = 20.0


@pytest.fixture
async def started(
    lab: NetnsLab, sites: tuple[Site, Site]
) -> AsyncIterator[tuple[WireGuardUapiDriver, WireGuardUapiDriver]]:
    async with started_pair(sites, WireGuardUapiDriver) as drivers:
        yield drivers[0], drivers[1]  # type: ignore[misc]


def psk_of(lab: NetnsLab, site: Site) -> str:
    return wg_show(lab, site.ns, site.settings.interface, "preshared-keys")[
        site.settings.peer_public_key
    ]


async def test_full_tunnel_fails_closed_then_carries_traffic_with_the_installed_key(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
) -> None:
    a, b = started
    assert isinstance(a, TunnelDriver)
    # Before any epoch key the two sides hold different random PSKs: no traffic.
    assert psk_of(lab, sites[0]) != psk_of(lab, sites[1])
    assert not lab.ping("a", TUNNEL4[1], count=2, wait_s=1)

    key = secrets.token_bytes(32)
    await a.install_key(1, key)
    await b.install_key(1, key)
    assert psk_of(lab, sites[0]) == psk_of(lab, sites[1]) == b64(key)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
    assert lab.ping("b", TUNNEL6[0], count=1, wait_s=2)

    health = await a.health()
    assert health.up and health.last_handshake_age_s is not None
    assert health.last_handshake_age_s < 30 and (health.rx_bytes or 0) > 0


async def test_new_key_on_both_survives_a_fresh_handshake(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
    tmp_path: Path,
) -> None:
    a, _ = started
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    for d in started:
        await d.install_key(1, k1)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
    for d in started:
        await d.install_key(2, k2)
    for s in sites:
        drop_session(lab, s.ns, s.settings.interface, tmp_path)
    assert (await a.health()).last_handshake_age_s is None  # the session really went
    assert psk_of(lab, sites[0]) == psk_of(lab, sites[1]) == b64(k2)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
    assert (await a.health()).up


async def test_different_keys_fail_the_next_handshake(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
    tmp_path: Path,
) -> None:
    a, b = started
    k = secrets.token_bytes(32)
    await a.install_key(1, k)
    await b.install_key(1, k)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
    await a.install_key(2, secrets.token_bytes(32))
    await b.install_key(2, secrets.token_bytes(32))
    for s in sites:
        drop_session(lab, s.ns, s.settings.interface, tmp_path)
    assert not lab.ping("a", TUNNEL4[1], count=3, wait_s=1)
    assert not lab.ping("b", TUNNEL4[0], count=2, wait_s=1)
    health = await a.health()
    assert not health.up and health.last_handshake_age_s is None


async def test_block_stops_traffic_at_once_and_a_new_key_restores_it(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
) -> None:
    a, b = started
    k = secrets.token_bytes(32)
    await a.install_key(1, k)
    await b.install_key(1, k)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
    allowed = wg_show(lab, sites[0].ns, sites[0].settings.interface, "allowed-ips")
    endpoints = wg_show(lab, sites[0].ns, sites[0].settings.interface, "endpoints")

    await a.block()
    # The established session is gone at once, in both directions.
    assert not lab.ping("a", TUNNEL4[1], count=2, wait_s=1)
    assert not lab.ping("b", TUNNEL4[0], count=2, wait_s=1)
    assert not (await a.health()).up
    # The peer is still there, with its endpoint and allowed IPs, and a PSK that is not k.
    assert wg_show(lab, sites[0].ns, sites[0].settings.interface, "allowed-ips") == allowed
    assert wg_show(lab, sites[0].ns, sites[0].settings.interface, "endpoints") == endpoints
    assert psk_of(lab, sites[0]) != b64(k)

    k2 = secrets.token_bytes(32)
    await a.install_key(2, k2)
    await b.install_key(2, k2)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)


async def test_stop_keep_tunnel_then_restart_adopts_it_with_its_key(
    lab: NetnsLab, sites: tuple[Site, Site],
) -> None:
    drivers = [WireGuardUapiDriver(s.settings) for s in sites]
    try:
        k = secrets.token_bytes(32)
        for d in drivers:
            await d.start()
            await d.install_key(1, k)
        assert lab.wait_ping("a", TUNNEL4[1], timeout_s=PING_TIMEOUT_S)
        await drivers[0].stop(keep_tunnel=True)
        # A restarted daemon adopts the running interface and keeps its PSK.
        drivers[0] = WireGuardUapiDriver(sites[0].settings)
        await drivers[0].start()
        assert psk_of(lab, sites[0]) == b64(k)
        assert lab.ping("a", TUNNEL4[1], count=1, wait_s=2)
    finally:
        for d in drivers:
            await d.stop(keep_tunnel=False)
    for s in sites:
        assert s.settings.interface not in lab.interfaces(s.ns)
        assert not (UAPI_SOCKET_DIR / f"{s.settings.interface}.sock").exists()


async def test_psk_only_changes_nothing_but_the_preshared_key(
    lab: NetnsLab, sites: tuple[Site, Site],
) -> None:
    s = sites[0]
    ifname = s.settings.interface
    lab.popen("a", ["wireguard-go", ifname], env=dict(os.environ, WG_PROCESS_FOREGROUND="1"))
    for _ in range(100):
        if (UAPI_SOCKET_DIR / f"{ifname}.sock").exists():
            break
        await asyncio.sleep(0.05)
    lab.run("a", [
        "wg", "set", ifname, "private-key", str(s.settings.private_key_file),
        "listen-port", "51999", "peer", s.settings.peer_public_key,
        "allowed-ips", "203.0.113.2/32,198.51.100.0/24", "endpoint", "192.0.2.2:51820",
        "persistent-keepalive", "25",
    ], check=True)
    before = {what: wg_show(lab, s.ns, ifname, what)
              for what in ("allowed-ips", "endpoints", "persistent-keepalive", "listen-port")}

    settings = type(s.settings)(
        interface=ifname, peer_public_key=s.settings.peer_public_key, manage="psk-only",
        netns=s.ns,
    )
    driver = make_wireguard_driver(settings)
    assert isinstance(driver, WireGuardUapiDriver)
    await driver.start()
    key = secrets.token_bytes(32)
    await driver.install_key(7, key)
    assert {what: wg_show(lab, s.ns, ifname, what) for what in before} == before
    assert psk_of(lab, s) == b64(key)

    # block() re-creates the peer exactly as the operator made it, with a random PSK.
    await driver.block()
    assert {what: wg_show(lab, s.ns, ifname, what) for what in before} == before
    assert psk_of(lab, s) not in (b64(key), "(none)")

    await driver.stop(keep_tunnel=False)  # psk-only never tears down what it did not make
    assert ifname in lab.interfaces("a")


async def test_psk_only_refuses_an_interface_without_that_peer(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
) -> None:
    s = sites[0]
    other = type(s.settings)(
        interface=s.settings.interface, manage="psk-only", netns=s.ns,
        peer_public_key=b64(secrets.token_bytes(32)),
    )
    driver = WireGuardUapiDriver(other)
    with pytest.raises(TunnelError, match="not configured"):
        await driver.start()
    # install_key must not create the unknown peer either.
    with pytest.raises(TunnelError, match="gone"):
        await driver.install_key(1, secrets.token_bytes(32))
    assert other.peer_public_key not in wg_show(lab, s.ns, s.settings.interface, "peers")


async def test_ipv6_underlay_endpoint(lab: NetnsLab, sites: tuple[Site, Site]) -> None:
    v6 = [dataclasses.replace(s.settings, endpoint=f"[{UNDERLAY6[1 - i]}]:{WG_PORT}")
          for i, s in enumerate(sites)]
    drivers = [WireGuardUapiDriver(s) for s in v6]
    try:
        k = secrets.token_bytes(32)
        for d in drivers:
            await d.start()
            await d.install_key(1, k)
        assert lab.wait_ping("a", TUNNEL6[1], timeout_s=PING_TIMEOUT_S)
        endpoints = wg_show(lab, sites[0].ns, v6[0].interface, "endpoints")
        assert endpoints[v6[0].peer_public_key] == f"[{UNDERLAY6[1]}]:{WG_PORT}"
    finally:
        for d in drivers:
            await d.stop(keep_tunnel=False)


async def test_a_hub_sized_listing_parses_as_wg_shows_it(
    lab: NetnsLab, sites: tuple[Site, Site], started: tuple[WireGuardUapiDriver, ...],
) -> None:
    """A listing past PARSE_IN_THREAD_LINES is parsed off the loop, with the same result."""
    site = sites[0]
    uapi = UapiClient(site.settings.interface, timeout_s=10)
    extra = 300
    lines: list[str] = []
    for i in range(extra):
        lines += [f"public_key={secrets.token_bytes(32).hex()}",
                  f"preshared_key={secrets.token_bytes(32).hex()}" if i % 2 else "",
                  f"allowed_ip=198.51.{i // 250}.{i % 250}/32",
                  f"persistent_keepalive_interval={i % 30}"]
    await uapi.set([ln for ln in lines if ln])
    dev = await uapi.get()
    raw = await uapi._request(b"get=1\n\n")
    assert len(raw) >= PARSE_IN_THREAD_LINES  # the threaded path
    # What the real tool reads from the same interface.
    ips = wg_show(lab, site.ns, site.settings.interface, "allowed-ips")
    keepalive = wg_show(lab, site.ns, site.settings.interface, "persistent-keepalive")
    psks = wg_show(lab, site.ns, site.settings.interface, "preshared-keys")
    assert len(dev.peers) == len(ips) == extra + 1
    for peer in dev.peers:
        key = b64(peer.public_key)
        assert " ".join(peer.allowed_ips) == ips[key].replace("(none)", "")
        assert peer.persistent_keepalive_s == (0 if keepalive[key] == "off"
                                               else int(keepalive[key]))
        assert peer.has_preshared_key == (psks[key] != "(none)")
        assert dev.peer(peer.public_key) is peer
