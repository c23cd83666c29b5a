"""BeQCI (seeds 001, 002): three independent point-to-point QKD links, a pair of
gateways on each (Ghent campuses: WireGuard `preferred`; Redu-Transinne: WireGuard
`required`; Belnet data centres: IKEv2/IPsec with the PPK, `required`).

One fault per link, one after the other: each faulted link reacts as its policy
says and recovers, and while it is faulted the other two links are untouched
(qsgw_lab.scenarios.beqci.FaultWatch: both ends of each stay `ok` with QKD in every
epoch, rotate, fail no handshake, report no error, drop no tunnel, raise no alarm,
and a ping stream through each loses nothing to speak of).
"""

from __future__ import annotations

import signal
import time

import pytest

from qsgw_lab.scenarios import beqci
from qsgw_lab.scenarios.beqci import FaultWatch
from qsgw_lab.scenarios.runner import ScenarioRun
from qsgw_lab.sitelab import Tunnel

from .conftest import OpenRun, assert_whole_scenario_works

pytestmark = pytest.mark.netns

MAX_LOST_PINGS = 2  # per bystander link and fault (pings every 0.25 s)


def _both(run: ScenarioRun, t: Tunnel, state: str) -> bool:
    return beqci.states(run, t) == (state, state)


def _assert_untouched(watch: FaultWatch, fault: str) -> None:
    """Hold the fault until both bystanders have rekeyed twice under it, then check."""
    watch.hold(epochs=2, timeout_s=30)
    reports = watch.finish()
    assert len(reports) == 2
    for report in reports.values():
        print(f"{fault}:{report.line()}")
        where = f"{report.label} during {fault}"
        assert not report.problems, (where, sorted(set(report.problems)))
        assert report.epochs >= 2, (where, "stopped rotating", report.epochs)
        assert report.pings_sent >= 12, (where, "too few pings", report.pings_sent)
        assert report.pings_lost <= MAX_LOST_PINGS, (where, report.pings_received,
                                                     report.pings_sent)


def _assert_recovers_with_qkd(run: ScenarioRun, t: Tunnel, timeout_s: float = 25) -> None:
    def ok() -> bool:
        st = [p or {} for p in beqci.ends(run, t)]
        return all(p.get("state") == "ok" and "QKD" in p.get("sources", ()) for p in st)
    assert run.sitelab.wait_for(ok, timeout_s), beqci.ends(run, t)
    assert run.wait_ping(t, 10), f"{run.label(t)} carries no traffic after recovery"


def test_beqci_three_links_a_fault_on_one_never_touches_the_others(open_run: OpenRun) -> None:
    begin = time.monotonic()
    with open_run("beqci") as run:
        ghent, redu, belnet = (beqci.link(run, n) for n in ("ghent", "redu-transinne",
                                                            "belnet"))
        assert [t.kind for t in (ghent, redu, belnet)] == ["wireguard", "wireguard", "ipsec"]
        # Three links with nothing in common: six gateways, six KMEs.
        kmes = {beqci.kme_of(run, s) for pair in beqci.LINKS.values() for s in pair}
        assert len(kmes) == 6
        assert run.wait_rotations(1, 40), {run.label(t): run.epochs_made(t)
                                           for t in run.tunnels.values()}
        for t in (ghent, redu, belnet):
            assert run.wait_ping(t, 15), f"no traffic through {run.label(t)}"
        # The bystanders' baseline before any fault: `ok` at both ends of every link (a
        # WireGuard responder sees its handshake with the first packet on the session,
        # a few seconds after the first epoch).
        assert run.sitelab.wait_for(lambda: all(_both(run, t, "ok") for t in (ghent, redu, belnet)),
                                    30), {run.label(t): beqci.states(run, t)
                                          for t in (ghent, redu, belnet)}
        # IPsec: each epoch is a new IKE SA that used the PPK, at both ends
        # (the signals of tests/daemon/test_ipsec_sites.py).
        ike_seen: set[str] = set()

        def new_ike_sa() -> bool:
            # One IKE SA with the PPK at each end, new at the initiator (charon's
            # unique IDs are per charon, so only one end's are compared).
            at_a, at_b = (beqci.established_with_ppk(s, belnet.if_a)
                          for s in (belnet.a, belnet.b))
            if len(at_a) != 1 or len(at_b) != 1 or at_a[0] in ike_seen:
                return False
            ike_seen.add(at_a[0])
            return True
        assert run.sitelab.wait_for(new_ike_sa, 10), beqci.ike_sas(belnet.a, belnet.if_a)
        epoch = run.epochs_made(belnet)
        assert run.sitelab.wait_for(lambda: run.epochs_made(belnet) > epoch, 15)
        assert run.sitelab.wait_for(new_ike_sa, 10), "an IPsec epoch without a new IKE SA"

        # 1. Belnet DC2's KME goes dark. The IPsec link is `required`: both gateways
        #    block it once the key expires (random PPK, IKE SAs terminated).
        with FaultWatch(run, [ghent, redu]) as watch:
            beqci.kme_outage(run, beqci.kme_of(run, "belnet2"))
            assert run.sitelab.wait_for(lambda: _both(run, belnet, "blocked"), 25), \
                beqci.ends(run, belnet)
            assert run.sitelab.wait_for(
                lambda: not beqci.established(belnet.a, belnet.if_a)
                and not beqci.established(belnet.b, belnet.if_b), 10), \
                (beqci.ike_sas(belnet.a, belnet.if_a), beqci.ike_sas(belnet.b, belnet.if_b))
            assert run.ping(belnet, count=2) is None, "traffic crosses a blocked IPsec link"
            _assert_untouched(watch, "the Belnet KME outage")
        beqci.restore(run)
        _assert_recovers_with_qkd(run, belnet)
        # Back on a fresh IKE SA, keyed with the new epoch's PPK.
        assert run.sitelab.wait_for(new_ike_sa, 10), beqci.ike_sas(belnet.a, belnet.if_a)

        # 2. Ghent campus A's key pool is drained and held empty. The campus link
        #    is `preferred`: it goes on keyed by ML-KEM-768 + X25519, degraded.
        with FaultWatch(run, [redu, belnet]) as watch:
            beqci.drain_pools(run, beqci.kme_of(run, "ugenta"))

            def degraded() -> bool:
                st = [p or {} for p in beqci.ends(run, ghent)]
                return all(p.get("state") == "degraded" and "QKD" not in p.get("sources", ())
                           and "ML-KEM-768" in p.get("sources", ()) for p in st)
            assert run.sitelab.wait_for(degraded, 25), beqci.ends(run, ghent)
            assert run.wait_ping(ghent, 5), "a degraded (preferred) link must carry traffic"
            _assert_untouched(watch, "the drained Ghent pool")
        beqci.restore(run)
        _assert_recovers_with_qkd(run, ghent)

        # 3. The Transinne gateway crashes (SIGKILL; its wireguard-go lives on with
        #    the last key). Redu's end is `required`: blocked once that key expires.
        with FaultWatch(run, [ghent, belnet]) as watch:
            run.sitelab.signal_daemon(redu.b, signal.SIGKILL)
            assert redu.b.process is not None
            redu.b.process.wait(10)
            assert run.sitelab.wait_for(
                lambda: (run.peer(redu, "a") or {}).get("state") == "blocked", 25), \
                run.peer(redu, "a")
            assert run.ping(redu, count=2) is None, "traffic crosses a blocked WireGuard link"
            _assert_untouched(watch, "the Transinne gateway crash")
        run.sitelab.start_daemon(redu.b)
        _assert_recovers_with_qkd(run, redu, timeout_s=30)

        # Each faulted link's own gateways reported it (their audit trails).
        def alarms(site: str) -> set[str]:
            return {r["alarm"] for r in run.audit(site)
                    if r.get("type") == "alarm" and r.get("action") == "raised"}
        assert "tunnel_blocked" in alarms("belnet1") & alarms("belnet2")
        assert "qkd_degraded" in alarms("ugenta") & alarms("ugentb")
        assert "tunnel_blocked" in alarms("redu")

        assert_whole_scenario_works(run, rotations=3)
        for t in (ghent, redu, belnet):
            assert _both(run, t, "ok"), (run.label(t), beqci.ends(run, t))
    assert time.monotonic() - begin < 180
