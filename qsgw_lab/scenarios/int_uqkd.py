"""INT-UQKD (seed 003): Redu - Luxembourg over fibre, Luxembourg - Singapore over a
satellite QKD link that makes key only during passes, a trusted relay at Luxembourg.

Redu <-> Singapore keys are relayed through KME_LUX_DC and pay on both links; every
such key's audit record names the relay. The satellite pool refills only while the
satellite is in view (compressed: a 10 s pass every 30 s). Timeline, which repeats
with every pass: during a pass every tunnel is keyed by QKD + PQC; when the pass ends
the tunnels go on with the keys stored in it; once the store is empty the `preferred`
Redu - Singapore tunnel goes on with ML-KEM + X25519 alone (degraded) and the
`required` bank - Singapore tunnel blocks when its key expires; the next pass brings
QKD back to both. The fibre tunnel Redu - Luxembourg never notices.

Times on the pass schedule count from the simulator's start; `Passes.sync` reads
GET /pools (link_up, next_change_in_s) to put them on this machine's clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.telemetry.audit_records import parse_time
from qsgw_lab.scenarios.runner import Event, ScenarioRun
from qsgw_lab.sitelab import Tunnel

SAT_LINK = "lux-singapore-sat"  # the satellite link, and its pool in GET /pools
FIBRE_LINK = "redu-lux-fibre"
RELAY_LINK = "redu-singapore-relay"
RELAY_KME = "KME_LUX_DC"  # the trusted node
KEY_BITS = 256


# ---------------------------------------------------------------------- the schedule

@dataclass(frozen=True)
class Passes:
    """The satellite link's pass schedule on this machine's wall clock.

    Pass k (k = 0, 1, ...) is up in [start(k), end(k)); `origin` is the wall-clock
    time of the simulator's start, which the schedule counts from.
    """

    period_s: float
    duration_s: float
    offset_s: float
    origin: float

    @classmethod
    def sync(cls, run: ScenarioRun) -> Passes:
        """Read the phase from GET /pools; the run's start picks the period it is in."""
        link = next(lk for lk in run.scenario.topology.links if lk.link_id == SAT_LINK)
        if link.passes is None:
            raise ValueError(f"{SAT_LINK} has no pass schedule in {run.scenario.topology_path}")
        p = link.passes
        snap = sat_pool(run)
        now = time.time()
        nxt = snap.get("next_change_in_s")
        if nxt is None:
            raise ValueError(f"GET /pools gives no next_change_in_s for {SAT_LINK}")
        phase = (p.duration_s if snap["link_up"] else p.period_s) - float(nxt)
        # The simulator started just before the daemons (run.started, monotonic): that
        # says which period we are in; the phase says where in it.
        rough = time.monotonic() - run.started
        periods = max(0, math.floor((rough - p.offset_s) / p.period_s)) + 2
        candidates = [p.offset_s + k * p.period_s + phase for k in range(periods)]
        if not snap["link_up"] and float(nxt) <= p.offset_s:
            candidates.append(p.offset_s - float(nxt))  # before the first pass
        since_start = min(candidates, key=lambda c: abs(c - rough))
        return cls(p.period_s, p.duration_s, p.offset_s, now - since_start)

    def index(self, at: float) -> int:
        """The pass whose period `at` falls in (-1 before the first)."""
        return math.floor((at - self.origin - self.offset_s) / self.period_s)

    def start(self, k: int) -> float:
        return self.origin + self.offset_s + k * self.period_s

    def end(self, k: int) -> float:
        return self.start(k) + self.duration_s

    def up(self, at: float) -> bool:
        k = self.index(at)
        return k >= 0 and at < self.end(k)

    def in_pass(self, at: float, k: int, margin_s: float = 0.0) -> bool:
        """`at` within pass k, at least `margin_s` from either edge."""
        return self.start(k) + margin_s <= at < self.end(k) - margin_s

    def in_gap(self, at: float, k: int, margin_s: float = 0.0) -> bool:
        """`at` between pass k and pass k+1, at least `margin_s` from either edge."""
        return self.end(k) + margin_s <= at < self.start(k + 1) - margin_s


def sat_pool(run: ScenarioRun) -> dict[str, Any]:
    """The satellite pool as GET /pools gives it (link_up, next_change_in_s, bits)."""
    return dict(run.pools()[SAT_LINK])


def wait_link(run: ScenarioRun, up: bool, timeout_s: float) -> bool:
    """Until the satellite link is (up) or is not (not up) in a pass."""
    return run.sitelab.wait_for(lambda: bool(sat_pool(run)["link_up"]) is up, timeout_s, 0.2)


# ---------------------------------------------------------------------- the audit trail

@dataclass(frozen=True)
class EpochMade:
    """One `epoch made` audit record of one end of a tunnel."""

    gateway: str
    peer: str
    epoch: int
    at: float  # wall clock
    sources: tuple[str, ...]
    degraded: bool
    qkd_keys: tuple[Mapping[str, Any], ...]

    @property
    def qkd(self) -> bool:
        return "QKD" in self.sources


def _ends(t: Tunnel, side: str) -> tuple[str, str]:
    """(site name, peer gateway ID) of one end of the tunnel."""
    return (t.a.name, t.b.gateway_id) if side == "a" else (t.b.name, t.a.gateway_id)


def _records(run: ScenarioRun, t: Tunnel, side: str, kind: str) -> list[dict[str, Any]]:
    site, peer = _ends(t, side)
    return run.audit(site, type=kind, peer=peer)


def epochs_made(run: ScenarioRun, t: Tunnel, side: str = "a") -> list[EpochMade]:
    out = []
    for r in _records(run, t, side, "epoch"):
        if r.get("outcome") != "made":
            continue
        out.append(EpochMade(str(r["gateway"]), str(r["peer"]), int(r["epoch"]),
                             parse_time(str(r["time"])).timestamp(),
                             tuple(r.get("sources", ())), bool(r.get("degraded")),
                             tuple(r.get("qkd_keys", ()))))
    return out


def epochs_failed(run: ScenarioRun, t: Tunnel, side: str = "a") -> list[tuple[float, str, str]]:
    """(time, reason, detail) of each failed epoch at one end."""
    return [(parse_time(str(r["time"])).timestamp(), str(r.get("reason")), str(r.get("detail")))
            for r in _records(run, t, side, "epoch") if r.get("outcome") == "failed"]


def policy_changes(run: ScenarioRun, t: Tunnel, side: str = "a") -> list[tuple[float, str, str]]:
    """(time, old, new) of each policy state change at one end."""
    return [(parse_time(str(r["time"])).timestamp(), str(r["old"]), str(r["new"]))
            for r in _records(run, t, side, "policy")]


def alarms_raised(run: ScenarioRun) -> dict[str, dict[tuple[str, str], int]]:
    """Per site: how often each (alarm, subject) was raised, from its audit trail."""
    out: dict[str, dict[tuple[str, str], int]] = {}
    for name in run.sites:
        counts: dict[tuple[str, str], int] = {}
        for r in run.audit(name):
            if r.get("type") == "alarm" and r.get("action") == "raised":
                key = (str(r.get("alarm")), str(r.get("subject")))
                counts[key] = counts.get(key, 0) + 1
        out[name] = counts
    return out


def kme_reason(run: ScenarioRun, since: float) -> str | None:
    """The KME's 503 message in the bank tunnel's last error, if it has one from
    `since` on (e.g. "... QKD link lux-singapore-sat is between passes (next pass in
    9.8 s)")."""
    st = run.peer(run.tunnel("luxbank", "singapore")) or {}
    err = str(st.get("last_error") or "")
    marker = "HTTP 503: "
    if marker not in err or float(st.get("last_error_at") or 0) < since:
        return None
    return err.split(marker, 1)[1].split(";", 1)[0].strip()


def relays_of(e: EpochMade) -> list[list[str]]:
    """The trusted relays each of the epoch's QKD keys came through (audit qkd_keys)."""
    return [list(k.get("relays") or []) for k in e.qkd_keys]


# ---------------------------------------------------------------------- the demo

def _sat_tunnels(run: ScenarioRun) -> list[Tunnel]:
    return [t for t in run.tunnels.values() if "singapore" in (t.a.name, t.b.name)]


def sat_line(s: Mapping[str, Any]) -> str:
    """One line on the satellite pool, from its GET /pools entry."""
    bits, cap = int(s["available_bits"]), int(s["capacity_bits"])
    view = "in view, making key" if s["link_up"] else "out of view"
    nxt = s.get("next_change_in_s")
    when = "" if nxt is None else (f", pass ends in {nxt:.0f} s" if s["link_up"]
                                   else f", next pass in {nxt:.0f} s")
    return (f"  satellite {SAT_LINK}: {view}{when}; store {bits}/{cap} bits "
            f"({bits // KEY_BITS} keys)")


def tally(run: ScenarioRun, passes: Passes) -> list[str]:
    """Per satellite tunnel: epochs keyed in passes, from stored keys between passes,
    PQC alone; times blocked; and where the QKD keys came from."""
    lines = []
    for t in _sat_tunnels(run):
        made = epochs_made(run, t)
        in_pass = sum(1 for e in made if e.qkd and passes.up(e.at))
        stored = sum(1 for e in made if e.qkd and not passes.up(e.at))
        pqc = sum(1 for e in made if not e.qkd)
        blocked = sum(1 for _, _, new in policy_changes(run, t) if new == "blocked")
        relays = sorted({r for e in made for rs in relays_of(e) for r in rs})
        via = (f"every QKD key relayed by {', '.join(relays)}" if relays
               else "QKD keys direct over the satellite")
        lines.append(f"  {run.label(t):18} QKD in a pass {in_pass:2}, QKD from the store "
                     f"between passes {stored:2}, PQC only (degraded) {pqc:2}, blocked "
                     f"{blocked}x; {via}")
    return lines


def demo(run: ScenarioRun, seconds: float, say: Callable[[str], None]) -> None:
    say("  sites: " + "; ".join(f"{s.gateway} ({s.role})" for s in run.scenario.sites))
    run.start()
    say(f"  key supply: {FIBRE_LINK} always on; {SAT_LINK} only in passes; Redu <-> "
        f"Singapore keys relayed through the trusted node {RELAY_KME} (both links pay)")
    say("  redu-luxdc: required (fibre); redu-singapore: preferred (PQC alone between "
        "passes, flagged degraded); luxbank-singapore: required (blocks without QKD)")
    for t in run.tunnels.values():
        run.wait_ping(t, 30)
    passes = Passes.sync(run)
    say(f"  pass schedule: {passes.duration_s:g} s in view every {passes.period_s:g} s "
        f"(compressed time), counted from the simulator's start")
    begin = time.time()
    said = {"dry": False, "why": False}  # in this gap between passes

    def pass_over(k: int) -> Callable[[], None]:
        def act() -> None:
            said["dry"] = said["why"] = False
            bits = int(sat_pool(run)["available_bits"])
            say(f"  pass {k + 1} over: {bits} bits ({bits // KEY_BITS} keys) stored at both "
                "ends; the satellite tunnels go on with them")
        return act

    def pass_begins(k: int) -> Callable[[], None]:
        def act() -> None:
            say(f"  pass {k + 1}: the store refills; QKD comes back to both satellite tunnels")
        return act

    events = []
    k = max(0, passes.index(begin))
    while passes.start(k) < begin + seconds:
        if passes.end(k) > begin:
            events.append(Event(passes.end(k) - begin, f"the satellite leaves view (pass "
                                f"{k + 1} ends)", pass_over(k)))
        if passes.start(k + 1) < begin + seconds:
            events.append(Event(passes.start(k + 1) - begin, f"the satellite is in view "
                                f"again (pass {k + 2})", pass_begins(k + 1)))
        k += 1

    def narrate(text: str) -> None:
        say(text)
        if text.startswith("---"):
            return
        s = sat_pool(run)
        say(sat_line(s))
        if s["link_up"]:
            return
        if int(s["available_bits"]) < KEY_BITS and not said["dry"]:
            said["dry"] = True
            say("  the store is empty: redu-singapore goes on with ML-KEM + X25519 "
                "(degraded); luxbank-singapore blocks once its key expires")
        now = time.time()
        reason = kme_reason(run, since=passes.end(passes.index(now)))
        if reason and not said["why"]:
            said["why"] = True
            say(f"  the KME answers the bank's enc_keys with 503: {reason}")

    run.monitor(seconds, events, say=narrate)
    say("  satellite tunnels, from the audit trails:")
    for line in tally(run, passes):
        say(line)
    say("  alarms raised (audit trails): " + "; ".join(
        f"{site}: {', '.join(f'{name} {subject} x{n}' for (name, subject), n in counts.items())}"
        for site, counts in alarms_raised(run).items() if counts))
