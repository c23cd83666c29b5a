"""The strongSwan driver against two real charons with userspace ESP (kernel-libipsec)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import subprocess
import time

import pytest

from gateway.tunnels.base import TunnelDriver, TunnelError

from .conftest import B_INNER, Site

pytestmark = pytest.mark.netns


def tunnel_ping(a: Site, count: int = 2) -> bool:
    """True if B's protected address answers A's protected address through the tunnel."""
    res = a.lab.run(
        "a",
        ["ping", "-n", "-q", "-c", str(count), "-W", "1", "-I", a.inner, B_INNER],
        timeout=count + 5,
    )
    return res.returncode == 0


async def rotate(a: Site, b: Site, epoch: int) -> bytes:
    key = secrets.token_bytes(32)
    await b.driver.install_key(epoch, key)
    await a.driver.install_key(epoch, key)
    await a.driver.activate(epoch)
    return key


def established(site: Site) -> list[dict]:  # type: ignore[type-arg]
    return [sa for sa in site.ike_sas() if sa["state"] == b"ESTABLISHED"]


async def wait_for(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())


async def test_driver_is_a_tunnel_driver(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    assert isinstance(a.driver, TunnelDriver)


async def test_first_epoch_brings_up_tunnel_keyed_with_ppk(sites: tuple[Site, Site]) -> None:
    a, b = sites
    assert not tunnel_ping(a, count=1)
    assert not (await a.driver.health()).up
    await rotate(a, b, 1)
    assert tunnel_ping(a)
    for site in (a, b):
        sas = established(site)
        assert len(sas) == 1, site.name
        assert sas[0]["ppk"] == b"yes"
        health = await site.driver.health()
        assert health.up, health.detail
        assert health.rx_bytes and health.tx_bytes
    # The responder learns the epoch in use from charon's ike-updown event.
    for site in (a, b):
        detail = ""
        for _ in range(50):
            detail = (await site.driver.health()).detail
            if "PPK of epoch 1" in detail:
                break
            await asyncio.sleep(0.05)
        assert "PPK of epoch 1" in detail, detail


async def test_rotation_replaces_ike_sa_and_old_one_goes(
    sites: tuple[Site, Site], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = sites
    caplog.set_level(logging.DEBUG)
    keys = [await rotate(a, b, 1)]
    before = {s.name: established(s)[0] for s in (a, b)}
    keys.append(await rotate(a, b, 2))
    # The responder deletes its old SA when the initiator's DELETE arrives.
    assert await wait_for(lambda: len(b.ike_sas()) == 1)
    for site in (a, b):
        sas = site.ike_sas()
        assert len(sas) == 1, f"{site.name}: old IKE SA still there"
        new, old = sas[0], before[site.name]
        assert new["state"] == b"ESTABLISHED" and new["ppk"] == b"yes"
        assert new["uniqueid"] != old["uniqueid"]
        assert (new["initiator-spi"], new["responder-spi"]) != (
            old["initiator-spi"],
            old["responder-spi"],
        )
    assert tunnel_ping(a)
    # No key material in our logs nor in charon's.
    logs = caplog.text + a.charon.log_file.read_text() + b.charon.log_file.read_text()
    for key in keys:
        assert key.hex() not in logs and key.hex().upper() not in logs


async def test_continuous_ping_loses_at_most_one_packet_per_rotation(
    sites: tuple[Site, Site],
) -> None:
    a, b = sites
    await rotate(a, b, 1)
    assert tunnel_ping(a, count=1)
    rotations = 10
    proc = a.lab.popen(
        "a",
        ["ping", "-n", "-q", "-i", "0.2", "-w", "30", "-W", "1", "-I", a.inner, B_INNER],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await asyncio.sleep(0.5)
        for epoch in range(2, 2 + rotations):
            await rotate(a, b, epoch)
            await asyncio.sleep(0.5)
    finally:
        proc.send_signal(2)  # SIGINT: ping prints its summary
        out, _ = await asyncio.to_thread(proc.communicate, timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, received = int(m.group(1)), int(m.group(2))
    assert sent >= 20, out
    assert sent - received <= rotations, out
    # Make-before-break: no rotation looked like the tunnel going down.
    assert a.downs == [] and b.downs == []


async def test_ppk_mismatch_fails_activate_and_next_key_heals(sites: tuple[Site, Site]) -> None:
    a, b = sites
    await rotate(a, b, 1)
    key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
    await b.driver.install_key(2, key_b)
    await a.driver.install_key(2, key_a)
    with pytest.raises(TunnelError) as err:
        await a.driver.activate(2)
    assert key_a.hex() not in str(err.value) and key_b.hex() not in str(err.value)
    assert "PPK mismatch" in str(err.value)
    # The tunnel keeps running on epoch 1's SA, and health says so.
    assert tunnel_ping(a, count=1)
    health = await a.driver.health()
    assert health.up and "PPK of epoch 1 (installed: epoch 2)" in health.detail, health.detail
    # No IKE SA keyed with the mismatched PPKs exists on either side.
    for site in (a, b):
        assert all(sa["state"] != b"CONNECTING" for sa in site.ike_sas())
    await rotate(a, b, 3)
    assert tunnel_ping(a)
    assert await wait_for(lambda: len(b.ike_sas()) == 1)
    assert len(established(a)) == 1 and established(a)[0]["ppk"] == b"yes"


async def test_block_stops_traffic_and_old_ppk_cannot_bring_it_back(
    sites: tuple[Site, Site],
) -> None:
    a, b = sites
    await rotate(a, b, 1)
    assert tunnel_ping(a, count=1)
    await a.driver.block()
    assert not tunnel_ping(a, count=2)
    assert a.ike_sas() == []
    assert await wait_for(lambda: b.ike_sas() == [])
    health = await a.driver.health()
    assert not health.up and "blocked" in health.detail
    with pytest.raises(TunnelError, match="not been installed"):
        await a.driver.activate(1)
    with pytest.raises(TunnelError, match="older than"):
        await a.driver.install_key(0, secrets.token_bytes(32))
    # B still holds epoch 1's PPK; initiating from B must fail against A.
    session = b.vici()
    try:
        with pytest.raises(Exception, match="failed"):
            for _ in session.initiate(
                {"child": b.settings.child_name, "ike": b.settings.connection, "timeout": "4000"}
            ):
                pass
    finally:
        session.transport.close()
    assert not tunnel_ping(a, count=1)
    assert established(a) == [] and established(b) == []


async def test_charon_restart_is_noticed_and_tunnel_comes_back(sites: tuple[Site, Site]) -> None:
    a, b = sites
    await rotate(a, b, 1)
    assert tunnel_ping(a, count=1)
    a.charon.kill()
    assert await wait_for(lambda: bool(a.downs), timeout=5.0), "on_down not called"
    assert "charon" in a.downs[0]
    assert not (await a.driver.health()).up
    a.charon.start()
    # The driver reconnects and reloads the connection and the current PPK by
    # itself: reauthenticating with epoch 1, without installing it again, works.
    await a.driver.activate(1)
    assert tunnel_ping(a)
    await rotate(a, b, 2)
    assert tunnel_ping(a)
    health = await a.driver.health()
    assert health.up, health.detail


@pytest.mark.parametrize("what", ["ike", "child"])
async def test_peer_deleting_the_tunnel_is_noticed(sites: tuple[Site, Site], what: str) -> None:
    a, b = sites
    await rotate(a, b, 1)
    assert a.downs == []
    # The responder's SA is on either of the tunnel's two connections.
    uid = established(b)[0]["uniqueid"].decode()
    message = {"ike-id": uid} if what == "ike" else {"child": b.settings.child_name}
    session = b.vici()
    try:
        for _ in session.terminate({**message, "timeout": "3000"}):
            pass
    finally:
        session.transport.close()
    assert await wait_for(lambda: bool(a.downs), timeout=5.0), "on_down not called"
    assert "deleted" in a.downs[0]
    await asyncio.sleep(0.3)
    assert len(a.downs) == 1, a.downs  # one outage, one report
    health = await a.driver.health()
    assert not health.up
    # What the daemon does on on_down: activate the current epoch again.
    await a.driver.activate(1)
    assert tunnel_ping(a, count=1)
