"""A lost DONE, with real daemons: seen, and healed.

The initiator reaches the responder through a small TCP proxy in its own
namespace (qsgw_lab/doneproxy.py) that drops one DONE frame and closes that
connection. The responder has then installed a key the initiator never did.
This must be seen: the initiator's error names the lost DONE, and the
responder's status shows its key as unconfirmed, not as a plain `ok`. It must
heal: the initiator retries with a new epoch, and both ends end up on one epoch
and one WireGuard PSK, both `ok`, carrying traffic.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _requires import require

from qsgw_lab.sitelab import CONTROL_PORT, Site, SiteLab, Tunnel

from .conftest import site_lab

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PROXY = "127.0.0.1:7900"  # in the initiator's namespace
# The first backed-off retry waits 0.5-1.0 x this: long enough to look at the
# split state, short against the rekey interval.
RETRY_INITIAL_S = 3.0
REKEY_S = 8.0
HEAL_BOUND_S = 30.0


@pytest.fixture
def donelab() -> Iterator[SiteLab]:
    with site_lab("qsdone") as sites:
        yield sites

def _through_proxy(sites: SiteLab, kind: str, drop_done: int
                   ) -> tuple[Site, Site, Tunnel, Path]:
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")  # initiates (lower ID)
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    add = sites.add_ipsec_tunnel if kind == "ipsec" else sites.add_wireguard_tunnel
    t = add(a, b, "required", REKEY_S, 40.0)
    a.peers[0]["control"] = PROXY
    for s in (a, b):
        s.peers[0]["retry_backoff_s"] = {"initial": RETRY_INITIAL_S, "max": 8}
        s.peers[0]["tunnel"]["liveness_s"] = 4.0
    sites.start_simulator()
    marker = sites.workdir / "dropped-done"
    sites.lab.popen(a.name, [sys.executable, "-m", "qsgw_lab.doneproxy", "--listen", PROXY,
                             "--to", f"{b.underlay_ip}:{CONTROL_PORT}",
                             "--drop-done", str(drop_done), "--marker", str(marker)],
                    cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for s in (b, a):
        sites.write_config(s)
        sites.start_daemon(s)
    return a, b, t, marker


def _peer(sites: SiteLab, site: Site, other: Site) -> dict[str, Any]:
    return sites.peer_status(site, other.gateway_id) or {}


def _key(sites: SiteLab, site: Site, t: Tunnel, kind: str) -> str | None:
    """What the data plane holds: the WireGuard PSK (IPsec: no PPK readback, None)."""
    ifname = t.if_a if site is t.a else t.if_b
    return sites.preshared_key(site, ifname) if kind == "wireguard" else None


@pytest.mark.parametrize("kind", ["wireguard", "ipsec"])
def test_lost_done_is_seen_and_healed(donelab: SiteLab, kind: str) -> None:
    if kind == "ipsec":
        require("charon", "unshare")
    sites = donelab
    a, b, t, marker = _through_proxy(sites, kind, drop_done=2)
    # Epoch 1 goes through; the second epoch's DONE is lost. The first rekey after a
    # start falls anywhere in 0.1-1 interval (spread), so the split is looked for
    # from the start, not after epoch 1 has been seen ok: it may come before that.
    split: dict[str, Any] = {}

    def seen() -> bool:
        pa, pb = _peer(sites, a, b), _peer(sites, b, a)
        if pb.get("epoch", 0) > pa.get("epoch", 0) and "DONE" in (pa.get("last_error") or ""):
            split.update(a=pa, b=pb, key_a=_key(sites, a, t, kind), key_b=_key(sites, b, t, kind))
            return True
        return False

    assert sites.wait_for(seen, 40 + REKEY_S, interval_s=0.1), \
        (marker.read_text() if marker.exists() else "the proxy never dropped a DONE",
         _peer(sites, a, b), _peer(sites, b, a))
    assert marker.read_text().count("dropped") == 1
    pa, pb = split["a"], split["b"]
    assert "no DONE from the peer" in pa["last_error"], pa["last_error"]
    assert "new epoch" in pa["last_error"], pa["last_error"]
    assert pb["key_confirmed"] is False, pb  # shown, not a plain ok with a confirmed key
    if kind == "wireguard":
        assert split["key_a"] != split["key_b"]
    split_epoch = pb["epoch"]

    # Healed: one epoch (one PSK), both ok, traffic passes.
    def converged() -> bool:
        pa, pb = _peer(sites, a, b), _peer(sites, b, a)
        key_a, key_b = _key(sites, a, t, kind), _key(sites, b, t, kind)
        return (pa.get("state") == pb.get("state") == "ok"
                and pa.get("epoch") == pb.get("epoch") and pa["epoch"] > split_epoch
                and key_a == key_b and (kind != "wireguard" or key_a is not None))

    assert sites.wait_for(converged, HEAL_BOUND_S), (_peer(sites, a, b), _peer(sites, b, a))
    assert sites.lab.wait_ping(a.name, t.ip_b, timeout_s=15)
    assert marker.read_text().count("dropped") == 1
