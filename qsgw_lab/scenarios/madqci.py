"""MadQCI (seed 004): three sites meshed through one shared MDI-QKD hub.

The hub's key supply is time-shared by the three pairs (one pool in the
topology). Timeline: the mesh comes up; all three tunnels rekey at the same
moment (SIGUSR1 to every gateway) and the pool covers it; then the hub runs
short (its rate cut to 40% of what three tunnels ask for). Each session sees
the pool low (ETSI 014 status), stops prefetching and spaces its rekeys out to
half the key lifetime; a handshake that still finds no key backs off, the
sooner the nearer its key is to expiry. The keys made go round all three
tunnels and none is blocked; then the rate comes back.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from qsgw_lab.scenarios.runner import Event, ScenarioRun

HUB_POOL = "madrid-mdi"
KEY_BITS = 256


def rekey_all_at_once(run: ScenarioRun) -> None:
    """SIGUSR1 to every gateway: each starts a new epoch with every peer now."""
    for site in run.sites.values():
        run.sitelab.signal_daemon(site, signal.SIGUSR1)


def hub_pool(run: ScenarioRun) -> dict[str, object]:
    return dict(run.pools()[HUB_POOL])


def make_hub_scarce(run: ScenarioRun, share: float = 0.4) -> float:
    """Empty the shared pool and cut its rate to `share` of what the mesh asks for
    (three tunnels, one 256-bit key per rekey interval each). Returns the new rate."""
    demand_bps = len(run.tunnels) * KEY_BITS / run.scenario.rekey_interval_s
    rate = demand_bps * share
    run.sitelab.admin("PUT", f"/pools/{HUB_POOL}", {"available_bits": 0, "rate_bps": rate})
    return rate


def restore_hub(run: ScenarioRun, rate_bps: float) -> None:
    run.sitelab.admin("PUT", f"/pools/{HUB_POOL}", {"rate_bps": rate_bps})


def qkd_epochs(run: ScenarioRun) -> dict[str, int]:
    """QKD-keyed epochs made per tunnel so far, from both ends' audit trails."""
    out: dict[str, int] = {}
    for t in run.tunnels.values():
        count = sum("QKD" in rec.get("sources", ())
                    for site, other in ((t.a, t.b), (t.b, t.a))
                    for rec in run.audit(site.name, type="epoch", outcome="made",
                                         peer=other.gateway_id))
        out[run.label(t)] = count // 2  # each epoch is audited at both ends
    return out


def demo(run: ScenarioRun, seconds: float, say: Callable[[str], None]) -> None:
    say("  sites: " + "; ".join(f"{s.gateway} ({s.role})" for s in run.scenario.sites))
    run.start()
    say("  all three tunnels are `required`: no epoch without a QKD key")
    for t in run.tunnels.values():
        run.wait_ping(t, 30)
    normal_rate = float(hub_pool(run)["rate_bps"])  # type: ignore[arg-type]
    state: dict[str, float] = {}

    def at_once() -> None:
        before = hub_pool(run)["available_bits"]
        rekey_all_at_once(run)
        say(f"  every gateway got SIGUSR1; shared hub pool had {before} bits "
            f"({int(before) // KEY_BITS} keys) for 3 tunnels")  # type: ignore[call-overload]

    def scarce() -> None:
        state["counts"] = sum(qkd_epochs(run).values())
        rate = make_hub_scarce(run)
        say(f"  hub pool emptied and its rate cut to {rate:.0f} bit/s, 40% of the mesh's "
            "demand: the sessions see the pool low and rekey every "
            f"{run.scenario.key_lifetime_s / 2:g} s instead of "
            f"{run.scenario.rekey_interval_s:g} s; a handshake without a key backs off")

    def restore() -> None:
        restore_hub(run, normal_rate)
        say(f"  QKD epochs per tunnel so far: {qkd_epochs(run)}")
        say(f"  hub rate back to {normal_rate:.0f} bit/s")

    run.monitor(seconds, [
        Event(seconds * 0.2, "all three tunnels rekey at the same moment", at_once),
        Event(seconds * 0.35, "the hub runs short of key", scarce),
        Event(seconds * 0.85, "the hub recovers", restore),
    ], say=say)
    say(f"  QKD epochs per tunnel: {qkd_epochs(run)}")
