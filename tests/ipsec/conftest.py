"""Two sites in network namespaces, each with its own charon (kernel-libipsec).

Site A (initiator): outer 192.0.2.1, protected 198.51.100.1.
Site B (responder): outer 192.0.2.2, protected 203.0.113.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import vici
from _requires import require

from gateway.tunnels.charon_process import CharonInstance, patched_libipsec_dir
from gateway.tunnels.strongswan import IpsecSettings, StrongSwanDriver

A_OUTER, B_OUTER = "192.0.2.1", "192.0.2.2"
A_INNER, B_INNER = "198.51.100.1", "203.0.113.1"


@dataclass
class Site:
    name: str
    lab: Any
    charon: CharonInstance
    driver: StrongSwanDriver
    settings: IpsecSettings
    inner: str
    downs: list[str] = field(default_factory=list)

    def vici(self) -> vici.Session:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(str(self.charon.vici_socket))
        return vici.Session(sock)

    def ike_sas(self) -> list[dict[str, Any]]:
        """The IKE SAs of the tunnel's connections (the configured one and its
        make-before-break twin), straight from charon."""
        session = self.vici()
        try:
            out = []
            for conn in self.settings.conn_names:
                for entry in session.list_sas({"ike": conn}):
                    out.extend(entry.values())
            return out
        finally:
            session.transport.close()


@pytest.fixture
def lab() -> Iterator[Any]:
    require("netns", "charon", "tun", "ip", "unshare")
    from qsgw_lab.netns import NetnsLab

    with NetnsLab() as lab:
        lab.add_namespace("a")
        lab.add_namespace("b")
        lab.connect("a", "b", [f"{A_OUTER}/24"], [f"{B_OUTER}/24"])
        lab.add_address("a", "lo", f"{A_INNER}/32")
        lab.add_address("b", "lo", f"{B_INNER}/32")
        yield lab


def _spawner(lab: Any, ns: str, workdir: Path) -> Any:
    def spawn(argv: Any) -> subprocess.Popen[bytes]:
        out = (workdir / "charon.stderr").open("ab")
        try:
            return lab.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()

    return spawn


def make_settings(workdir: Path, conn: str, side: str, **over: Any) -> IpsecSettings:
    mine, peer = (A_OUTER, B_OUTER) if side == "a" else (B_OUTER, A_OUTER)
    lts, rts = (A_INNER, B_INNER) if side == "a" else (B_INNER, A_INNER)
    values: dict[str, Any] = dict(
        vici_socket=workdir / "charon.vici",
        connection=conn,
        ppk_id=f"qsgw-{conn}",
        local_addrs=(mine,),
        remote_addrs=(peer,),
        local_ts=(f"{lts}/32",),
        remote_ts=(f"{rts}/32",),
        local_id=f"gw-{side}",
        remote_id=f"gw-{'b' if side == 'a' else 'a'}",
        initiator=side == "a",
        timeout_s=5.0,
    )
    values.update(over)
    return IpsecSettings(**values)


@contextlib.asynccontextmanager
async def site_pair(
    lab: Any,
    tmp_path: Path,
    over_a: dict[str, Any] | None = None,
    over_b: dict[str, Any] | None = None,
    before_start: Callable[[str, CharonInstance], None] | None = None,
) -> AsyncIterator[tuple[Site, Site]]:
    """Two charons and two started drivers; settings overridable per side.

    `before_start(side, charon)` runs once a charon is up and before its
    driver starts (to load a swanctl connection for manage=ppk-only).
    """
    psk_file = tmp_path / "ike.psk"
    if not psk_file.exists():
        fd = os.open(psk_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
    conn = f"t{secrets.token_hex(3)}"
    made: list[Site] = []
    try:
        for side, inner, over in (("a", A_INNER, over_a), ("b", B_INNER, over_b)):
            workdir = tmp_path / f"charon-{side}-{conn}"
            workdir.mkdir()
            charon = CharonInstance(workdir, spawn=_spawner(lab, side, workdir),
                                    library_path=patched_libipsec_dir())
            charon.start()
            values: dict[str, Any] = {"psk_file": psk_file, **(over or {})}
            settings = make_settings(workdir, conn, side, **values)
            site = Site(side, lab, charon, None, settings, inner)  # type: ignore[arg-type]
            made.append(site)
            if before_start is not None:
                before_start(side, charon)
            site.driver = StrongSwanDriver(settings, on_down=site.downs.append)
            await site.driver.start()
        yield made[0], made[1]
    finally:
        for site in made:
            if site.driver is not None:
                await site.driver.stop(keep_tunnel=False)
            site.charon.stop()


@pytest.fixture
async def sites(lab: Any, tmp_path: Path) -> AsyncIterator[tuple[Site, Site]]:
    async with site_pair(lab, tmp_path) as pair:
        yield pair
