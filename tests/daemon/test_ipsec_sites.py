"""IPsec sites: a real charon (kernel-libipsec) per namespace, keyed by qsgw daemons (PPK)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from _requires import require

from qsgw_lab.sitelab import Site, SiteLab, Tunnel

pytestmark = pytest.mark.netns


@pytest.fixture
def ipsec_sites(sitelab: SiteLab) -> Iterator[SiteLab]:
    require("charon", "unshare")
    yield sitelab


def _pair(sites: SiteLab, policy: str, rekey: float, lifetime: float) -> tuple[Site, Site, Tunnel]:
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    t = sites.add_ipsec_tunnel(a, b, policy, rekey, lifetime)
    sites.start_simulator()
    for s in (a, b):
        sites.write_config(s)
        sites.start_daemon(s)
    return a, b, t


def _ike_sas(site: Site, conn: str) -> list[dict[str, Any]]:
    """The IKE SAs of the tunnel's connections: `conn` and its make-before-break twin."""
    import socket

    import vici

    from gateway.tunnels.strongswan_settings import TWIN_SUFFIX
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(site.charon.vici_socket))
    session = vici.Session(sock)
    try:
        out: list[dict[str, Any]] = []
        for name in (conn, conn + TWIN_SUFFIX):
            for entry in session.list_sas({"ike": name}):
                out.extend(entry.values())
        return out
    finally:
        sock.close()


def _established(sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [sa for sa in sas if sa.get("state") == b"ESTABLISHED"]


def _epoch(sites: SiteLab, site: Site, peer: str) -> int:
    st = sites.peer_status(site, peer)
    return -1 if st is None else int(st["epoch"])


def _ping(sites: SiteLab, site: Site, src: str, dst: str, count: int = 1) -> bool:
    res = sites.lab.run(site.name, ["ping", "-n", "-q", "-c", str(count), "-W", "1", "-I", src,
                                    dst], timeout=count + 5)
    return res.returncode == 0


def _wait_both(sites: SiteLab, a: Site, b: Site, at_least: int, timeout_s: float) -> int:
    def ok() -> bool:
        ea, eb = _epoch(sites, a, b.gateway_id), _epoch(sites, b, a.gateway_id)
        return ea == eb and ea >= at_least
    assert sites.wait_for(ok, timeout_s), (sites.peer_status(a, b.gateway_id),
                                           sites.peer_status(b, a.gateway_id))
    return _epoch(sites, a, b.gateway_id)


def test_each_epoch_is_a_new_ike_sa_with_the_ppk_and_traffic_flows(ipsec_sites: SiteLab) -> None:
    sites = ipsec_sites
    a, b, t = _pair(sites, "required", rekey=2.0, lifetime=10.0)
    first = _wait_both(sites, a, b, 1, 40)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 15), "no traffic over IPsec"
    ping = sites.lab.popen(a.name, ["ping", "-n", "-i", "0.2", "-W", "1", "-w", "45", "-I",
                                    t.ip_a, t.ip_b], stdout=subprocess.PIPE, text=True)
    seen_ids: set[bytes] = set()
    epoch = first
    rotations = 0
    try:
        while rotations < 10:
            epoch = _wait_both(sites, a, b, epoch + 1, 20)
            # The initiator activates after DONE: give the reauth a moment. The next
            # rotation (2 s) brings its own twin for a moment, so each side is polled
            # until its one SA shows rather than read once.
            sole: dict[str, Any] = {}
            for site in (a, b):
                def one(site: Site = site, sole: dict[str, Any] = sole) -> bool:
                    sas = _established(_ike_sas(site, t.if_a))
                    if len(sas) == 1:
                        sole[site.name] = sas[0]
                    # At the initiator, the one SA must be this epoch's, not the last.
                    return len(sas) == 1 and (site is b or sas[0]["uniqueid"] not in seen_ids)
                assert sites.wait_for(one, 10), (
                    f"{site.name}: no sole new IKE SA: "
                    f"{[x.get('uniqueid') for x in _established(_ike_sas(site, t.if_a))]}")
                assert sole[site.name].get("ppk") == b"yes", f"{site.name}: IKE SA without the PPK"
            uid = sole[a.name]["uniqueid"]
            seen_ids.add(uid)
            rotations += 1
    finally:
        ping.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        out, _ = ping.communicate(timeout=10)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(x.split()[0]) for x in summary.split(",")[:2])
    assert sent - received <= rotations, f"lost {sent - received} pings over {rotations} rotations"


@pytest.mark.parametrize("policy", ["preferred", "required"])
def test_kme_outage_under_ipsec(ipsec_sites: SiteLab, policy: str) -> None:
    sites = ipsec_sites
    a, b, t = _pair(sites, policy, rekey=1.5, lifetime=5.0)
    _wait_both(sites, a, b, 1, 40)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 15)
    sites.set_fault("KME_INTA", outage=True)
    want = "degraded" if policy == "preferred" else "blocked"
    assert sites.wait_for(lambda: (sites.peer_status(a, b.gateway_id) or {}).get("state") == want,
                          20), sites.peer_status(a, b.gateway_id)
    if policy == "required":
        assert not _established(_ike_sas(a, t.if_a)), "IKE SA still up while blocked"
        assert not _ping(sites, a, t.ip_a, t.ip_b, count=2)
    else:
        assert _ping(sites, a, t.ip_a, t.ip_b, count=2)
    sites.clear_faults()
    assert sites.wait_for(lambda: (sites.peer_status(a, b.gateway_id) or {}).get("state") == "ok",
                          30), sites.peer_status(a, b.gateway_id)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 15), "tunnel did not come back"


def test_charon_restarted_under_the_daemon_comes_back(ipsec_sites: SiteLab) -> None:
    sites = ipsec_sites
    a, b, t = _pair(sites, "required", rekey=30.0, lifetime=90.0)  # no scheduled rekey
    _wait_both(sites, a, b, 1, 40)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 15)
    sites.restart_charon(b)

    def reported() -> bool:
        # Noticed and reported in `qsgw status` by the daemon whose charon restarted.
        st = sites.peer_status(b, a.gateway_id) or {}
        return st.get("tunnel_downs", 0) >= 1 and "charon" in (st.get("last_tunnel_down") or "")
    assert sites.wait_for(reported, 30), sites.peer_status(b, a.gateway_id)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 40), "tunnel did not come back"
    assert _established(_ike_sas(b, t.if_a))[0].get("ppk") == b"yes"


def test_wrong_ppk_on_one_side_is_reported_and_healed(ipsec_sites: SiteLab) -> None:
    """Fault: an operator tool overwrites b's PPK (e.g. a stale swanctl secret), then
    charon drops the SA on its own. The daemon notices, rekeys, and the fresh epoch heals it."""
    import os
    import socket

    import vici

    sites = ipsec_sites
    a, b, t = _pair(sites, "required", rekey=30.0, lifetime=90.0)
    e = _wait_both(sites, a, b, 1, 40)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 15)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(b.charon.vici_socket))
    session = vici.Session(sock)
    session.load_shared({"id": f"qsgw-ppk-{t.if_a}", "type": "PPK",
                         "data": os.urandom(32), "owners": [f"{t.if_a}-ppk"]})
    for sa in _ike_sas(b, t.if_a):  # on either of the tunnel's two connections
        list(session.terminate({"ike-id": sa["uniqueid"].decode(), "force": "yes",
                                "timeout": "-1"}))
    sock.close()
    assert sites.wait_for(lambda: _epoch(sites, a, b.gateway_id) > e, 30), \
        sites.peer_status(a, b.gateway_id)
    assert sites.wait_for(lambda: _ping(sites, a, t.ip_a, t.ip_b), 20), "not healed"
    st = sites.peer_status(a, b.gateway_id) or {}
    assert st["state"] == "ok"
    assert st["tunnel_downs"] >= 1 and st["last_tunnel_down"], "the drop was not reported"
    # Healed by a fresh epoch: both charons hold one IKE SA with the new PPK.
    for site in (a, b):
        sas = _established(_ike_sas(site, t.if_a))
        assert len(sas) == 1 and sas[0].get("ppk") == b"yes"
