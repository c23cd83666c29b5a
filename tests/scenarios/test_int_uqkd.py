"""INT-UQKD (seed 003): Redu - Luxembourg over fibre, Luxembourg - Singapore over a
satellite link that makes key only during passes, a trusted relay at Luxembourg.

One whole pass cycle, on the simulator's schedule (GET /pools: link_up,
next_change_in_s): QKD in a pass; after it the stored keys carry on; once the store
is empty the `preferred` tunnel runs on PQC alone (degraded, traffic flows) and the
`required` one blocks (traffic stops); the next pass brings QKD back to both. Every
relayed key's audit record names the trusted node at Luxembourg, at both ends.
"""

from __future__ import annotations

import time

from qsgw_lab.scenarios import int_uqkd
from qsgw_lab.scenarios.int_uqkd import Passes, epochs_failed, epochs_made, policy_changes
from qsgw_lab.scenarios.runner import ScenarioRun
from qsgw_lab.sitelab import Tunnel

from .conftest import OpenRun, assert_whole_scenario_works

EDGE_S = 1.5  # audit and poll times against the schedule: this far from a pass edge counts


def _qkd_epoch_in_pass(run: ScenarioRun, t: Tunnel, passes: Passes, k: int) -> bool:
    return any(e.qkd and passes.in_pass(e.at, k) for e in epochs_made(run, t))


def _state(run: ScenarioRun, t: Tunnel, side: str = "a") -> str:
    st = run.peer(t, side)
    return "" if st is None else str(st["state"])


def _states(run: ScenarioRun) -> dict[str, str]:
    return {f"{run.label(t)}/{side}": _state(run, t, side)
            for t in run.tunnels.values() for side in ("a", "b")}


def _timeline(run: ScenarioRun, passes: Passes, k: int) -> str:
    """The satellite tunnels' epochs and policy changes, in seconds from the end of pass
    k (for a failure message)."""
    end = passes.end(k)
    lines = [f"states {_states(run)}; pool {int_uqkd.sat_pool(run)}"]
    for t in (run.tunnel("redu", "singapore"), run.tunnel("luxbank", "singapore")):
        for side in ("a", "b"):
            made = [f"{e.at - end:+.1f}{'' if e.qkd else ' PQC'}"
                    for e in epochs_made(run, t, side) if e.at > end - 5]
            changes = [f"{at - end:+.1f} {new}" for at, _, new in policy_changes(run, t, side)]
            failed = [f"{at - end:+.1f} {reason}" for at, reason, _ in epochs_failed(run, t, side)
                      if at > end - 5]
            lines.append(f"{run.label(t)}/{side}: made {made}; policy {changes}; "
                         f"failed {failed}")
    return "\n".join(lines)


def test_int_uqkd_satellite_passes_relay_and_policies(open_run: OpenRun) -> None:
    with open_run("int-uqkd") as run:
        fibre = run.tunnel("redu", "luxdc")
        relayed = run.tunnel("redu", "singapore")  # preferred, fibre + satellite
        bank = run.tunnel("luxbank", "singapore")  # required, satellite alone
        sat = (relayed, bank)
        assert (relayed.policy, bank.policy, fibre.policy) == ("preferred", "required",
                                                               "required")
        assert run.wait_rotations(1, 40), _states(run)
        passes = Passes.sync(run)

        # 1. A pass: both satellite tunnels keyed by QKD while the satellite is in view.
        #    (The first pass starts with the simulator; a slow start takes the next.)
        k = max(0, passes.index(time.time()))
        deadline = time.time() + 2 * passes.period_s
        while not all(_qkd_epoch_in_pass(run, t, passes, k) for t in sat):
            assert time.time() < deadline, {run.label(t): epochs_made(run, t) for t in sat}
            if time.time() >= passes.end(k):
                k += 1
            time.sleep(0.3)
        gap_end = passes.start(k + 1)
        for t in sat:
            # ok once the data plane carries it. A first WireGuard handshake can miss
            # (an end still bringing its interface up, or between two 1 s epochs on a
            # loaded machine: a fresh root's runs sat pending 8 s), and WireGuard's own
            # retry comes REKEY_TIMEOUT (5 s) later: within two retries.
            assert run.sitelab.wait_for(lambda t=t: _state(run, t, "a") == "ok"
                                        and _state(run, t, "b") == "ok", 11), \
                f"{_states(run)}\n{run.data_plane(sat)}"

        # 2. The pass ends with keys in the store; they are spent between passes.
        time.sleep(max(0.0, passes.end(k) - time.time()))
        assert int_uqkd.wait_link(run, up=False, timeout_s=5), int_uqkd.sat_pool(run)
        stored = int(int_uqkd.sat_pool(run)["available_bits"])
        assert stored >= 2 * int_uqkd.KEY_BITS, f"only {stored} bits stored at the pass end"

        # 3. The store runs dry: `preferred` degrades at both ends (PQC alone, traffic
        #    flows), `required` blocks at both ends (traffic stops), before the next pass.
        def dry() -> bool:
            return (all(_state(run, relayed, s) == "degraded" for s in ("a", "b"))
                    and all(_state(run, bank, s) == "blocked" for s in ("a", "b")))
        assert run.sitelab.wait_for(dry, gap_end - time.time() - 2, 0.3), _timeline(run, passes, k)
        print(f"dry {gap_end - time.time():.1f} s before pass {k + 2}")  # shown on failure
        st = run.peer(relayed)
        assert st is not None and st["sources"] == ["ML-KEM-768", "X25519"], st
        assert run.wait_ping(relayed, 1), "the degraded (PQC-only) tunnel carries no traffic"
        assert run.ping(bank) is None, "the blocked tunnel still carries traffic"
        pool = int_uqkd.sat_pool(run)
        assert not pool["link_up"] and int(pool["available_bits"]) < int_uqkd.KEY_BITS, pool

        # 4. The next pass: QKD again on both, the bank's tunnel unblocked.
        time.sleep(max(0.0, gap_end - time.time()))
        assert int_uqkd.wait_link(run, up=True, timeout_s=5), int_uqkd.sat_pool(run)

        def rekeyed() -> bool:
            return all(_qkd_epoch_in_pass(run, t, passes, k + 1) for t in sat)

        def carrying() -> bool:
            return all(_state(run, t, s) == "ok" for t in sat for s in ("a", "b"))
        assert run.sitelab.wait_for(rekeyed, passes.duration_s - 1, 0.3), \
            _timeline(run, passes, k + 1)
        # ok once the data plane carries it: the blocked tunnel's WireGuard gave up
        # on handshakes under the random PSK and retries within 5 s; the tunnel
        # stays keyed a while after the pass, as it did after pass k.
        assert run.sitelab.wait_for(carrying, passes.end(k + 1) + 2 - time.time(), 0.3), \
            f"{_states(run)}\n{run.data_plane(sat)}"
        print(f"recovered {time.time() - gap_end:.1f} s into pass {k + 2}")
        assert run.wait_ping(bank, 10), "the bank's tunnel carries no traffic after the pass"
        print(f"bank's traffic back {time.time() - gap_end:.1f} s into pass {k + 2}")

        # The audit trail, at both ends of each tunnel, against the schedule.
        for t in sat:
            for side in ("a", "b"):
                made = epochs_made(run, t, side)
                where = f"{run.label(t)}/{side}"
                # Keys stored in pass k keyed epochs after it had ended.
                assert any(e.qkd and passes.in_gap(e.at, k, EDGE_S) for e in made), where
                # Within a pass, never an epoch without QKD.
                assert not [e for e in made if not e.qkd and any(
                    passes.in_pass(e.at, j, EDGE_S) for j in range(k + 2))], where
                if t is relayed:
                    pqc = [e for e in made if not e.qkd]
                    assert any(passes.in_gap(e.at, k) for e in pqc), (where, pqc)
                    assert all(e.degraded and not e.qkd_keys for e in pqc), (where, pqc)
                    # Every relayed key came through the trusted node at Luxembourg.
                    for e in made:
                        if e.qkd:
                            assert e.qkd_keys and all(
                                q.get("route") == "trusted_relay"
                                and q.get("link") == int_uqkd.RELAY_LINK
                                and q.get("relays") == [int_uqkd.RELAY_KME]
                                and q.get("path") == ["KME_ESEC_REDU", int_uqkd.RELAY_KME,
                                                      "KME_SINGAPORE"]
                                for q in e.qkd_keys), (where, e)
                else:
                    assert all(e.qkd and not e.degraded for e in made), where
                    assert all(q.get("route") == "point_to_point"
                               and q.get("link") == int_uqkd.SAT_LINK and q.get("relays") == []
                               for e in made for q in e.qkd_keys), where
                    changes = [(passes.in_gap(at, k), new)
                               for at, _, new in policy_changes(run, t, side)]
                    assert (True, "blocked") in changes, (where, changes)
                    assert changes[-1][1] == "ok", (where, changes)
        assert "blocked" not in {new for side in ("a", "b")
                                 for _, _, new in policy_changes(run, relayed, side)}
        # What the operators saw: Redu's QKD-degraded alarm, the bank's tunnel-blocked
        # alarm, raised between passes and cleared by the next pass.
        for site, alarm, peer in (("redu", "qkd_degraded", "gw-singapore"),
                                  ("luxbank", "tunnel_blocked", "gw-singapore")):
            actions = [r["action"] for r in run.audit(site) if r.get("type") == "alarm"
                       and r.get("alarm") == alarm and r.get("subject") == peer]
            assert actions[:1] == ["raised"] and actions[-1] == "cleared", (site, alarm, actions)
        # An empty store is a short pool, not a KME that does not answer.
        assert not [(site, subject) for site, counts in int_uqkd.alarms_raised(run).items()
                    for name, subject in counts if name == "kme_unreachable"]
        # The KME said why: the satellite link was between passes.
        assert any("between passes" in detail for _, _, detail in epochs_failed(run, bank)), \
            epochs_failed(run, bank)[-3:]

        # The fibre tunnel never noticed: QKD every epoch, never blocked.
        for side in ("a", "b"):
            made = epochs_made(run, fibre, side)
            assert made and all(e.qkd for e in made)
            assert all(q.get("route") == "point_to_point" and q.get("link") == int_uqkd.FIBRE_LINK
                       for e in made for q in e.qkd_keys)
            assert "blocked" not in {new for _, _, new in policy_changes(run, fibre, side)}

        assert_whole_scenario_works(run, rotations=3)
