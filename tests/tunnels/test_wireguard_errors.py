"""Bad input to the WireGuard drivers: a typed TunnelError, never key material."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from gateway.tunnels.base import TunnelError
from gateway.tunnels.wireguard_common import (
    WireGuardSettings,
    make_wireguard_driver,
    read_private_key,
    split_endpoint,
)
from gateway.tunnels.wireguard_kernel import WireGuardKernelDriver
from gateway.tunnels.wireguard_uapi import UAPI_SOCKET_DIR, UapiClient, WireGuardUapiDriver
from qsgw_lab.netns import NetnsLab

from .conftest import Site, b64, write_secret


def _assert_no_secret(exc: BaseException, secret: bytes) -> None:
    text = f"{exc} {exc!r} {exc.__cause__!r}"
    for form in (secret.hex(), secret[:8].hex(), base64.b64encode(secret).decode()):
        assert form not in text


async def test_bad_key_length_is_refused_without_the_key_in_the_error(
    lab: NetnsLab, sites: tuple[Site, Site],
) -> None:
    driver = WireGuardUapiDriver(sites[0].settings)
    await driver.start()
    try:
        for bad in (secrets.token_bytes(31), secrets.token_bytes(33)):
            with pytest.raises(TunnelError, match="32 bytes") as info:
                await driver.install_key(1, bad)
            _assert_no_secret(info.value, bad)
        # wireguard-go itself rejects a malformed key: its errno comes back, the key does not.
        bad_hex = secrets.token_bytes(32).hex()[:-2] + "zz"
        uapi = UapiClient(sites[0].settings.interface)
        with pytest.raises(TunnelError, match=r"errno=-?\d+ \(Invalid argument\)") as info:
            await uapi.set([
                f"public_key={base64.b64decode(sites[0].settings.peer_public_key).hex()}",
                f"preshared_key={bad_hex}",
            ])
        assert bad_hex not in str(info.value) and bad_hex[:16] not in str(info.value)
        # The interface still works after the refused requests.
        assert (await uapi.get()).peer(base64.b64decode(sites[0].settings.peer_public_key))
    finally:
        await driver.stop(keep_tunnel=False)


async def test_unknown_interface_is_a_tunnel_error(tmp_path: Path) -> None:
    settings = WireGuardSettings(
        interface=f"wgnone{secrets.token_hex(3)}", manage="psk-only",
        peer_public_key=b64(secrets.token_bytes(32)),
    )
    driver = WireGuardUapiDriver(settings, socket_dir=tmp_path)
    with pytest.raises(TunnelError, match="no UAPI socket"):
        await driver.start()
    key = secrets.token_bytes(32)
    with pytest.raises(TunnelError, match="no UAPI socket") as info:
        await driver.install_key(1, key)
    _assert_no_secret(info.value, key)
    health = await driver.health()
    assert not health.up and "no UAPI socket" in health.detail


async def test_a_silent_uapi_socket_times_out(tmp_path: Path) -> None:
    import asyncio

    ifname = "wgsilent0"
    server = await asyncio.start_unix_server(
        lambda r, w: asyncio.sleep(5), path=str(tmp_path / f"{ifname}.sock")
    )
    try:
        with pytest.raises(TunnelError, match="did not answer"):
            await UapiClient(ifname, tmp_path, timeout_s=0.3).get()
    finally:
        server.close()


def test_private_key_file_must_be_0600_and_is_never_echoed(tmp_path: Path) -> None:
    key = base64.b64encode(secrets.token_bytes(32))
    loose = tmp_path / "loose.key"
    loose.write_bytes(key)
    loose.chmod(0o644)
    with pytest.raises(TunnelError, match="0600"):
        read_private_key(loose)
    short = write_secret(tmp_path / "short.key", key[:20])
    with pytest.raises(TunnelError, match="does not hold") as info:
        read_private_key(short)
    assert key[:20].decode() not in str(info.value)
    good = write_secret(tmp_path / "good.key", key + b"\n")
    assert read_private_key(good) == base64.b64decode(key)
    with pytest.raises(TunnelError, match="cannot open"):
        read_private_key(tmp_path / "missing.key")


def test_settings_are_checked_up_front(tmp_path: Path) -> None:
    pk = b64(secrets.token_bytes(32))
    with pytest.raises(TunnelError, match="not base64"):
        WireGuardSettings(interface="wg0", peer_public_key="not a key!", manage="psk-only")
    with pytest.raises(TunnelError, match="16 bytes"):
        WireGuardSettings(interface="wg0", peer_public_key=b64(bytes(16)), manage="psk-only")
    with pytest.raises(TunnelError, match="private_key_file"):
        WireGuardSettings(interface="wg0", peer_public_key=pk, manage="full")
    with pytest.raises(TunnelError, match="ifname"):
        WireGuardSettings(interface="a-very-long-ifname0", peer_public_key=pk, manage="psk-only")
    with pytest.raises(TunnelError, match="address/prefix"):
        WireGuardSettings(interface="wg0", peer_public_key=pk, manage="psk-only",
                          allowed_ips=("203.0.113.300/32",))
    assert split_endpoint("[fd00::1]:51820") == ("fd00::1", 51820)
    assert split_endpoint("gw.example:443") == ("gw.example", 443)
    for bad in ("192.0.2.1", "fd00::1:51820", "host:0", "host:99999"):
        with pytest.raises(TunnelError, match="endpoint"):
            split_endpoint(bad)


def test_factory_picks_the_driver_and_reprs_hold_no_key(tmp_path: Path) -> None:
    keyfile = write_secret(tmp_path / "k", base64.b64encode(secrets.token_bytes(32)))
    pk = b64(secrets.token_bytes(32))
    user = make_wireguard_driver(WireGuardSettings(
        interface="wg0", peer_public_key=pk, private_key_file=keyfile))
    kern = make_wireguard_driver(WireGuardSettings(
        interface="wg0", peer_public_key=pk, private_key_file=keyfile, driver="kernel"))
    assert isinstance(user, WireGuardUapiDriver)
    assert isinstance(kern, WireGuardKernelDriver)
    assert "wg0" in repr(user) and keyfile.read_text() not in repr(user) + repr(kern)


async def test_own_public_key_as_peer_is_refused(
    lab: NetnsLab, sites: tuple[Site, Site],
) -> None:
    import dataclasses
    import subprocess

    s = sites[0].settings
    assert s.private_key_file is not None
    own = subprocess.run(["wg", "pubkey"], input=s.private_key_file.read_bytes(),
                         capture_output=True, check=True, timeout=5).stdout.decode().strip()
    driver = WireGuardUapiDriver(dataclasses.replace(s, peer_public_key=own))
    try:
        with pytest.raises(TunnelError, match="own public key"):
            await driver.start()
        # Refused before wireguard-go was started: no interface, no socket.
        assert s.interface not in lab.interfaces("a")
        assert not (UAPI_SOCKET_DIR / f"{s.interface}.sock").exists()
    finally:
        await driver.stop(keep_tunnel=False)
