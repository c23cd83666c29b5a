"""Fixtures for the WireGuard driver tests: real namespaces, real wireguard-go, real `wg`."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _requires import require

from gateway.tunnels.base import TunnelDriver
from gateway.tunnels.wireguard_common import WireGuardSettings
from qsgw_lab.netns import NetnsLab

WG_PORT = 51820
UNDERLAY = ("192.0.2.1", "192.0.2.2")
UNDERLAY6 = ("fd00:192::1", "fd00:192::2")
TUNNEL4 = ("203.0.113.1", "203.0.113.2")
TUNNEL6 = ("fd00:203::1", "fd00:203::2")


def write_secret(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@dataclass
class KeyPair:
    private_file: Path
    public_b64: str


def make_keypair(tmp: Path, name: str) -> KeyPair:
    """A WireGuard key pair made by the real `wg genkey`/`wg pubkey`."""
    priv = subprocess.run(["wg", "genkey"], capture_output=True, check=True, timeout=5).stdout
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, check=True, timeout=5
    ).stdout
    return KeyPair(write_secret(tmp / f"{name}.key", priv), pub.decode().strip())


@pytest.fixture
def need_wireguard_go() -> None:
    require("netns", "wireguard-go", "wg", "ping", "tun")


@pytest.fixture
def lab(need_wireguard_go: None) -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        lab.add_namespace("a")
        lab.add_namespace("b")
        lab.connect("a", "b", [f"{UNDERLAY[0]}/24", f"{UNDERLAY6[0]}/64"],
                    [f"{UNDERLAY[1]}/24", f"{UNDERLAY6[1]}/64"])
        yield lab


@dataclass
class Site:
    ns: str  # real namespace name
    settings: WireGuardSettings


@pytest.fixture
def sites(lab: NetnsLab, tmp_path: Path) -> tuple[Site, Site]:
    """Settings for a two-site WireGuard tunnel, manage: full (nothing started)."""
    keys = [make_keypair(tmp_path, "a"), make_keypair(tmp_path, "b")]
    out = []
    for i, name in enumerate(("a", "b")):
        other = 1 - i
        out.append(Site(lab.ns_name(name), WireGuardSettings(
            interface=lab.unique(f"wg{name}"),
            peer_public_key=keys[other].public_b64,
            private_key_file=keys[i].private_file,
            listen_port=WG_PORT,
            addresses=(f"{TUNNEL4[i]}/24", f"{TUNNEL6[i]}/64"),
            endpoint=f"{UNDERLAY[other]}:{WG_PORT}",
            allowed_ips=(f"{TUNNEL4[other]}/32", f"{TUNNEL6[other]}/128"),
            netns=lab.ns_name(name),
            timeout_s=5.0,
        )))
    return out[0], out[1]


def wg_show(lab: NetnsLab, ns: str, ifname: str, what: str) -> dict[str, str]:
    """`wg show IFNAME WHAT` as {peer public key: value}."""
    res = lab.run(ns, ["wg", "show", ifname, what], timeout=5, check=True)
    rows = (line.split("\t") for line in res.stdout.splitlines() if line.strip())
    return {row[0]: "\t".join(row[1:]) for row in rows}


def drop_session(lab: NetnsLab, ns: str, ifname: str, tmp: Path) -> None:
    """Force a fresh WireGuard handshake without changing any key: `wg setconf`
    with the interface's own `wg showconf` replaces (removes and re-adds) its
    peers, which throws their session keys away."""
    conf = lab.run(ns, ["wg", "showconf", ifname], timeout=5, check=True).stdout
    path = write_secret(tmp / f"{ifname}-{os.urandom(3).hex()}.conf", conf.encode())
    try:
        lab.run(ns, ["wg", "setconf", ifname, str(path)], timeout=5, check=True)
    finally:
        path.unlink()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@contextlib.asynccontextmanager
async def started_pair(
    sites: tuple[Site, Site], make: Callable[[WireGuardSettings], TunnelDriver]
) -> AsyncIterator[list[TunnelDriver]]:
    """Both sites' drivers started; stopped (tunnels torn down) however the test ends."""
    drivers = [make(s.settings) for s in sites]
    try:
        for d in drivers:
            await d.start()
        yield drivers
    finally:
        for d in drivers:
            await d.stop(keep_tunnel=False)
