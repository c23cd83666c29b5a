"""Whole sites in namespaces: real daemons, real wireguard-go, the KME simulator over mTLS."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _requires import require

from qsgw_lab.netns import NetnsLab
from qsgw_lab.sitelab import Site, SiteLab

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "configs" / "topologies" / "madqci.yaml"


@contextlib.contextmanager
def site_lab(prefix: str) -> Iterator[SiteLab]:
    """Whole sites under a namespace prefix of their own (so that two labs never clean up
    each other's namespaces); the daemons' last log lines are printed on failure."""
    require("netns", "wireguard-go", "wg", "ping", "tun")
    with tempfile.TemporaryDirectory(prefix=f"qsgw-{prefix}-") as tmp, \
            NetnsLab(prefix=prefix) as lab:
        sites = SiteLab(lab, Path(tmp), TOPOLOGY)
        try:
            yield sites
        finally:
            sites.close()
            _dump_logs_on_failure(Path(tmp))


@pytest.fixture
def sitelab() -> Iterator[SiteLab]:
    with site_lab("qsgwd") as sites:
        yield sites


def _dump_logs_on_failure(tmp: Path) -> None:
    # Printed output only shows when the test failed: the daemons' last lines.
    for log in sorted(tmp.glob("*/daemon.log")):
        lines = log.read_text(errors="replace").splitlines()[-60:]
        print(f"--- {log.parent.name}/daemon.log (last {len(lines)} lines)")
        print("\n".join(lines))


def two_sites(sites: SiteLab, policy: str = "required", rekey: float = 2.0,
              lifetime: float = 6.0) -> tuple[Site, Site]:
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    sites.add_wireguard_tunnel(a, b, policy, rekey, lifetime)
    sites.start_simulator()
    for s in (a, b):
        sites.write_config(s)
        sites.start_daemon(s)
    return a, b
