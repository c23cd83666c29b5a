"""Benelux cross-border MDI-QKD (seed 000): an untrusted hub at Arlon, a full mesh of
end nodes, and a new end node joining the running network.

The hub at Arlon never holds a key: every pair of end nodes gets its own pairwise
keys through it (pool "arlon-mdi:<KME a>-<KME b>"), each key's audit record names
the hub as the untrusted MDI hub of its route (never as a trusted relay), and no
gateway config names the hub. The 132 km Kirchberg - Arlon - Redu span sets the
rate, 400 bit/s per pair; the mesh, one 256-bit key per tunnel per rekey, asks far
less. Timeline: the three end nodes mesh; the pools are cut to two keys each, so
that the mesh lives on the rate the span makes; the key origins are shown; Bissen
joins (its gateway starts, the other three reload on SIGHUP) while the existing
tunnels are pinged five times a second and their sessions watched; its three
tunnels come up and rotate; the pools have grown since the cut.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.telemetry.audit_records import parse_time
from gateway.telemetry.key_origin import describe_origin
from qsgw_lab.scenarios.runner import Event, ScenarioRun
from qsgw_lab.sitelab import Tunnel

HUB = "HUB_ARLON"  # the untrusted measurement node: not a KME, holds no key
HUB_LINK = "arlon-mdi"  # the topology's mdi_hub link; pools "arlon-mdi:<KME a>-<KME b>"
NEW_NODE = "bissen"  # the end node that joins the running network
KEY_BITS = 256
LIVE_KEYS = 2  # what the pools are cut to: from then on the mesh lives on the rate
PING_INTERVAL_S = 0.2

_SEQ = re.compile(r"icmp_seq=(\d+) ttl=")


# ---------------------------------------------------------------------- key supply

def span_rate_bps(run: ScenarioRun) -> float:
    """The hub link's rate per pair of end nodes (the 132 km span's)."""
    link = next(lk for lk in run.scenario.topology.links if lk.link_id == HUB_LINK)
    return float(link.rate_bps)


def demand_bps(t: Tunnel) -> float:
    """QKD bits a tunnel asks of its pair's stream: one key per rekey."""
    return KEY_BITS / t.rekey_interval_s


def hub_pools(run: ScenarioRun) -> dict[str, dict[str, Any]]:
    """GET /pools, the hub's pairwise pools only."""
    return {name: snap for name, snap in run.pools().items()
            if name.startswith(f"{HUB_LINK}:")}


def pair_pool(run: ScenarioRun, t: Tunnel,
              pools: dict[str, dict[str, Any]] | None = None) -> str:
    """The pool of the tunnel's pair of end KMEs (`pools`: a hub_pools() already read)."""
    a, b = t.a.kme_id, t.b.kme_id
    names = set(hub_pools(run) if pools is None else pools)
    for name in (f"{HUB_LINK}:{a}-{b}", f"{HUB_LINK}:{b}-{a}"):
        if name in names:
            return name
    raise KeyError(f"no {HUB_LINK} pool for {a} and {b}")


def live_on_rate(run: ScenarioRun, keys: int = LIVE_KEYS) -> dict[str, int]:
    """Cut every pairwise pool to `keys` keys: from now on the mesh runs on what the
    span makes. Returns the pools' bits just before the cut."""
    before = {name: int(snap["available_bits"]) for name, snap in hub_pools(run).items()}
    for name in before:
        run.sitelab.admin("PUT", f"/pools/{name}", {"available_bits": keys * KEY_BITS})
    return before


# ---------------------------------------------------------------------- the hub holds no key

def epoch_records(run: ScenarioRun, site: str) -> list[dict[str, Any]]:
    return run.audit(site, type="epoch", outcome="made")


def key_origin_problems(run: ScenarioRun) -> tuple[int, list[str]]:
    """(QKD keys checked, problems): every QKD key of every made epoch, at both ends,
    must have come over the hub link straight from one end KME to the other with
    the hub as its untrusted MDI hub, and no trusted relay on the way."""
    kme_of = {s.gateway_id: s.kme_id for s in run.sites.values()}
    checked, problems = 0, []
    for name, site in run.sites.items():
        for rec in epoch_records(run, name):
            ends = {site.kme_id, kme_of.get(str(rec.get("peer")), "?")}
            for origin in rec.get("qkd_keys") or []:
                checked += 1
                path = origin.get("path") or []
                ok = (origin.get("route") == "mdi_hub" and origin.get("link") == HUB_LINK
                      and origin.get("hub") == HUB and origin.get("relays") == []
                      and len(path) == 3 and path[1] == HUB and {path[0], path[2]} == ends)
                if not ok:
                    problems.append(f"{site.gateway_id} epoch {rec.get('epoch')} with "
                                    f"{rec.get('peer')}: {describe_origin(origin)}")
    return checked, problems


def hub_holds_nothing(run: ScenarioRun) -> list[str]:
    """Problems (empty: none): the hub is no KME of the simulator (no SAE can ask it
    for a key) and no gateway's config names it."""
    problems = []
    if HUB in run.sitelab.endpoints.get("kmes", {}):
        problems.append(f"{HUB} serves keys as a KME")
    for site in run.sites.values():
        text = site.config_path.read_text()
        if HUB in text:
            problems.append(f"{site.config_path} names {HUB}")
        if f"kme_id: {site.kme_id}" not in text:
            problems.append(f"{site.config_path} does not use its own KME {site.kme_id}")
    return problems


def non_qkd_epochs(run: ScenarioRun) -> list[str]:
    """Made epochs without a QKD key (a `preferred` tunnel degraded), one line each."""
    return [f"{r.get('gateway')} epoch {r.get('epoch')} with {r.get('peer')}: "
            f"sources {'+'.join(r.get('sources', []))}"
            for name in run.sites for r in epoch_records(run, name)
            if "QKD" not in r.get("sources", ()) or r.get("degraded")]


# ---------------------------------------------------------------------- the join

def join_new_node(run: ScenarioRun, name: str = NEW_NODE) -> list[Tunnel]:
    """The operator's gateway-side steps: the new gateway starts with a peer for each
    end node and, once it answers (`qsgw status`), each end node's config gains the
    new peer, then SIGHUP."""
    return run.join(name, ready_timeout_s=30)


def audit_since(run: ScenarioRun, since: float,
                sites: Iterable[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(site, record) of every failed epoch, policy change and alarm at or after
    `since` (wall clock) in the given sites' audit trails (default: all)."""
    out = []
    for name in (list(run.sites) if sites is None else list(sites)):
        for rec in run.audit(name):
            if parse_time(str(rec.get("time"))).timestamp() < since:
                continue
            if rec.get("type") in ("policy", "alarm") or (
                    rec.get("type") == "epoch" and rec.get("outcome") == "failed"):
                out.append((name, rec))
    return out


def describe_record(site: str, rec: dict[str, Any]) -> str:
    if rec.get("type") == "alarm":
        return (f"{site}: alarm {rec.get('alarm')} {rec.get('action')} for "
                f"{rec.get('subject')} ({rec.get('detail')})")
    if rec.get("type") == "policy":
        return f"{site}: peer {rec.get('peer')} {rec.get('old')} -> {rec.get('new')}"
    return (f"{site}: epoch with {rec.get('peer')} failed, {rec.get('reason')} "
            f"({rec.get('detail')})")


def disturbances(run: ScenarioRun, since: float, existing: Iterable[Tunnel]) -> list[str]:
    """What the audit trails say happened to the existing tunnels since `since`: a
    failed epoch, a policy state change or an alarm about one of their peers."""
    tunnels = list(existing)
    sites = {s.name for t in tunnels for s in (t.a, t.b)}
    peers = {s.gateway_id for t in tunnels for s in (t.a, t.b)}
    return [describe_record(site, rec) for site, rec in audit_since(run, since, sites)
            if rec.get("peer") in peers or rec.get("subject") in peers]


def reloads(run: ScenarioRun) -> dict[str, int | None]:
    """Each gateway's `reloads` count from its status socket (None: not answering)."""
    out: dict[str, int | None] = {}
    for name, site in run.sites.items():
        doc = run.sitelab.status(site)
        out[name] = None if doc is None else int(doc["reloads"])
    return out


@dataclass
class _Side:
    """One end of a watched tunnel: its status samples and its interface."""

    site: str
    peer: str
    ifname: str
    ifindex: int | None
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # epoch, made, downs


@dataclass(frozen=True)
class TunnelDuringJoin:
    """What one existing tunnel went through while a node joined."""

    label: str
    pings: int  # echo requests in the watched span
    lost: int
    longest_gap: int  # most echo requests lost in a row
    epochs_before: int  # epochs made (lower of the two ends) at the start of the watch
    epochs_after: int
    resets: list[str]  # a session that started again (epochs_made or epoch went down)
    tunnel_downs: int
    recreated: list[str]  # interfaces whose ifindex changed or that went away

    def line(self) -> str:
        restarts = "no restart" if not self.resets else "RESTARTED " + "; ".join(self.resets)
        interfaces = "kept" if not self.recreated else "RECREATED " + ", ".join(self.recreated)
        return (f"  {self.label:18} {self.pings - self.lost}/{self.pings} pings answered "
                f"(longest gap {self.longest_gap}); epochs {self.epochs_before} -> "
                f"{self.epochs_after}, {restarts}; tunnel_downs {self.tunnel_downs}; "
                f"interfaces {interfaces}")


def _ifindex(run: ScenarioRun, site: str, ifname: str) -> int | None:
    res = run.lab.run(site, ["ip", "-o", "link", "show", "dev", ifname], timeout=5)
    head = res.stdout.split(":", 1)[0].strip()
    return int(head) if res.returncode == 0 and head.isdigit() else None


def _ping_seqs(path: Path) -> list[int]:
    return [int(m.group(1)) for m in _SEQ.finditer(path.read_text(errors="replace"))]


class JoinWatch:
    """Watch existing tunnels while the network changes: a `ping -i 0.2` through each
    (every echo request counted), their sessions' status twice a second (epochs
    must keep counting up, never start again; no tunnel_downs), and their WireGuard
    interfaces (same ifindex before and after: not recreated)."""

    def __init__(self, run: ScenarioRun, tunnels: Iterable[Tunnel]) -> None:
        self.run = run
        self.tunnels = list(tunnels)
        self._pings: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._sides: dict[str, tuple[_Side, _Side]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        run = self.run
        for t in self.tunnels:
            label = run.label(t)
            self._sides[label] = (
                _Side(t.a.name, t.b.gateway_id, t.if_a, _ifindex(run, t.a.name, t.if_a)),
                _Side(t.b.name, t.a.gateway_id, t.if_b, _ifindex(run, t.b.name, t.if_b)))
            out = run.workdir / f"joinwatch-{label}.ping"
            with out.open("wb") as fh:
                proc = run.lab.popen(t.a.name, ["ping", "-n", "-i", str(PING_INTERVAL_S),
                                                "-W", "1", t.ip_b],
                                     stdout=fh, stderr=subprocess.STDOUT)
            self._pings[label] = (proc, out)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="joinwatch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for a, b in self._sides.values():
            for side in (a, b):
                st = self.run.sitelab.peer_status(self.run.sites[side.site], side.peer)
                if st is not None:
                    side.samples.append((int(st["epoch"]), int(st["epochs_made"]),
                                         int(st["tunnel_downs"])))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> list[TunnelDuringJoin]:
        """Stop watching; what each tunnel went through."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._sample()
        time.sleep(1.5)  # the last echo requests' answers
        self.close()
        return [self._judge(label, _ping_seqs(out)) for label, (_, out) in self._pings.items()]

    def close(self) -> None:
        """Stop the sampler and the pings (idempotent; stop() calls it)."""
        self._stop.set()
        for proc, _ in self._pings.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def _judge(self, label: str, seqs: Sequence[int]) -> TunnelDuringJoin:
        answered = set(seqs)
        # The watched span: from the first answer to the last (ping numbers from 1).
        span = range(min(answered), max(answered) + 1) if answered else range(0)
        gap = longest = 0
        for s in span:
            gap = 0 if s in answered else gap + 1
            longest = max(longest, gap)
        resets, recreated, downs = [], [], 0
        made_first, made_last = [], []
        for side in self._sides[label]:
            for (e0, m0, _), (e1, m1, _) in zip(side.samples, side.samples[1:], strict=False):
                if m1 < m0 or e1 < e0:
                    resets.append(f"{side.site}: epochs_made {m0}->{m1}, epoch {e0}->{e1}")
            downs = max([downs, *(d for _, _, d in side.samples)])
            made_first.append(side.samples[0][1] if side.samples else 0)
            made_last.append(side.samples[-1][1] if side.samples else 0)
            now = _ifindex(self.run, side.site, side.ifname)
            if side.ifindex is None or now != side.ifindex:
                recreated.append(f"{side.site}/{side.ifname} {side.ifindex}->{now}")
        return TunnelDuringJoin(label, len(span), len(span) - len(answered), longest,
                                min(made_first), min(made_last), resets, downs, recreated)


# ---------------------------------------------------------------------- the demo

def pool_lines(run: ScenarioRun) -> list[str]:
    rate = span_rate_bps(run)
    pools = hub_pools(run)
    lines = []
    for t in run.tunnels.values():
        name = pair_pool(run, t, pools)
        bits = int(pools[name]["available_bits"])
        lines.append(f"  {run.label(t):18} {name:36} {bits:6} bits ({bits // KEY_BITS:3} keys); "
                     f"makes {rate:.0f} bit/s, the tunnel asks {demand_bps(t):.0f} bit/s")
    return lines


def origin_lines(run: ScenarioRun) -> list[str]:
    """The latest epoch's key origin per tunnel, from one end's audit trail."""
    lines = []
    for t in run.tunnels.values():
        for site, other in ((t.a, t.b), (t.b, t.a)):
            recs = [r for r in epoch_records(run, site.name)
                    if r.get("peer") == other.gateway_id and r.get("qkd_keys")]
            if recs:
                rec = recs[-1]
                lines.append(f"  {site.gateway_id} epoch {rec['epoch']} with {other.gateway_id}: "
                             f"{describe_origin(rec['qkd_keys'][0])}")
                break
    return lines


def demo(run: ScenarioRun, seconds: float, say: Callable[[str], None]) -> None:
    say("  sites: " + "; ".join(f"{s.gateway} ({s.role})" for s in run.scenario.sites))
    say(f"  the hub {HUB} at Arlon is an untrusted measurement node: it runs no gateway "
        "and is no KME; every pair of end nodes gets its own keys through it")
    run.start()
    say("  within Luxembourg the tunnels are `required`; those with ESA Redu, across the "
        "132 km span, `preferred`")
    for t in run.tunnels.values():
        run.wait_ping(t, 30)
    state: dict[str, Any] = {}
    watch = JoinWatch(run, list(run.tunnels.values()))

    def cut() -> None:
        state["cut_at"] = time.monotonic()
        before = live_on_rate(run)
        say(f"  every pairwise pool cut from about {min(before.values()) // KEY_BITS} keys to "
            f"{LIVE_KEYS}: from now on the mesh lives on the {span_rate_bps(run):.0f} bit/s "
            "per pair that the 132 km span makes")
        say("\n".join(pool_lines(run)))

    def origins() -> None:
        say("\n".join(origin_lines(run)))
        checked, problems = key_origin_problems(run)
        problems += hub_holds_nothing(run)
        say(f"  {checked} QKD keys audited so far, each via {HUB} as untrusted hub, no "
            f"trusted relay; no gateway config names the hub"
            if not problems else "  PROBLEMS: " + "; ".join(problems))

    def join() -> None:
        new = run.scenario.site(NEW_NODE)
        say(f"  the QKD network has provisioned {run.scenario.kme_of(new)} on the Arlon hub; "
            f"now the gateway side: {new.gateway} starts, and kirchberg, redu and belval get "
            "the new peer in their configs and a SIGHUP")
        watch.start()
        state["join_at"] = time.time()
        added = join_new_node(run)
        say(f"  {len(added)} tunnels added: "
            + ", ".join(f"{run.label(t)} ({t.policy})" for t in added))
        first = [n for n in run.sites if n != NEW_NODE]
        run.sitelab.wait_for(lambda: all(reloads(run).get(n) for n in first), 10)
        counts = reloads(run)
        say("  config reloads (qsgw status): "
            + ", ".join(f"{run.sites[n].gateway_id} {counts[n]}" for n in first))

    def judge() -> None:
        say("  the existing tunnels while the node joined:")
        say("\n".join(r.line() for r in watch.stop()))
        since = float(state.get("join_at", 0.0))
        bad = disturbances(run, since, watch.tunnels)
        say("  their audit trails since the join: no failed epoch, state change or alarm"
            if not bad else "  their audit trails since the join: " + "; ".join(bad))
        new_gw = run.sites[NEW_NODE].gateway_id
        about_new = [describe_record(site, rec) for site, rec in audit_since(run, since)
                     if rec.get("type") != "policy" and rec.get("alarm") != "key_pool_low"
                     and (site == NEW_NODE or new_gw in (rec.get("peer"), rec.get("subject")))]
        if about_new:
            say("  with the new node, while it came up (retried with backoff): "
                + "; ".join(about_new))

    def pools_now() -> None:
        elapsed = time.monotonic() - state.get("cut_at", time.monotonic())
        say(f"  pools after {elapsed:.0f} s on the span's rate alone (supply outruns demand):")
        say("\n".join(pool_lines(run)))

    run.monitor(seconds, [
        Event(seconds * 0.1, "the mesh runs on the MDI rate", cut),
        Event(seconds * 0.2, "where the keys came from (audit trail)", origins),
        Event(seconds * 0.3, f"a new end node joins: {NEW_NODE}", join),
        Event(seconds * 0.75, "the join, as the existing tunnels saw it", judge),
        Event(seconds * 0.9, "the key pools", pools_now),
    ], say=say)
    checked, problems = key_origin_problems(run)
    say(f"  {checked} QKD keys audited, all through {HUB} as untrusted hub"
        if not problems else "  KEY ORIGIN PROBLEMS: " + "; ".join(problems))
    degraded = non_qkd_epochs(run)
    say("  every epoch had a QKD key" if not degraded
        else f"  epochs without QKD: {len(degraded)}")
