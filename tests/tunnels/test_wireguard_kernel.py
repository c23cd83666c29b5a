"""The kernel WireGuard driver (pyroute2 generic netlink)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _requires import require

from gateway.tunnels.base import TunnelError
from gateway.tunnels.wireguard_common import WireGuardSettings
from gateway.tunnels.wireguard_kernel import WireGuardKernelDriver
from qsgw_lab.netns import NetnsLab

from .conftest import TUNNEL4, Site, b64, started_pair, wg_show


def _kernel_has_wireguard() -> bool:
    res = subprocess.run(["modprobe", "wireguard"], capture_output=True, timeout=10, check=False)
    return res.returncode == 0


@pytest.fixture
def needs_module() -> None:
    require("kernel-wireguard")  # a kernel module: skips, saying so, even under CI


@pytest.fixture
async def kernel_sites(
    lab: NetnsLab, sites: tuple[Site, Site]
) -> AsyncIterator[tuple[WireGuardKernelDriver, WireGuardKernelDriver]]:
    async with started_pair(sites, WireGuardKernelDriver) as drivers:
        yield drivers[0], drivers[1]  # type: ignore[misc]


@pytest.mark.usefixtures("needs_module")
async def test_kernel_tunnel_key_block_and_restore(
    lab: NetnsLab, sites: tuple[Site, Site],
    kernel_sites: tuple[WireGuardKernelDriver, WireGuardKernelDriver],
) -> None:
    a, b = kernel_sites
    assert not lab.ping("a", TUNNEL4[1], count=1, wait_s=1)  # fail closed before a key
    k = secrets.token_bytes(32)
    await a.install_key(1, k)
    await b.install_key(1, k)
    for s in sites:
        assert wg_show(lab, s.ns, s.settings.interface, "preshared-keys")[
            s.settings.peer_public_key] == b64(k)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=12)
    assert (await a.health()).up
    await a.block()
    assert not lab.ping("a", TUNNEL4[1], count=2, wait_s=1)
    k2 = secrets.token_bytes(32)
    await a.install_key(2, k2)
    await b.install_key(2, k2)
    assert lab.wait_ping("a", TUNNEL4[1], timeout_s=12)


@pytest.mark.skipif(_kernel_has_wireguard(), reason="kernel has a wireguard module")
async def test_without_the_module_start_says_so(
    lab: NetnsLab, sites: tuple[Site, Site], tmp_path: Path,
) -> None:
    driver = WireGuardKernelDriver(sites[0].settings)
    with pytest.raises(TunnelError, match="no wireguard module"):
        await driver.start()
    psk_only = WireGuardKernelDriver(WireGuardSettings(
        interface=sites[0].settings.interface, manage="psk-only", netns=sites[0].ns,
        peer_public_key=sites[0].settings.peer_public_key,
    ))
    key = secrets.token_bytes(32)
    with pytest.raises(TunnelError) as info:
        await psk_only.install_key(1, key)
    assert key.hex() not in str(info.value) and b64(key) not in str(info.value)
    assert not (await psk_only.health()).up
