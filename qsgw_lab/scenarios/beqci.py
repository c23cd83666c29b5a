"""BeQCI (seeds 001, 002): three independent point-to-point QKD links, a pair of
gateways on each.

Ghent University's two campuses (WireGuard, `preferred`), ESA Redu to CETIC
Transinne (WireGuard, `required`) and Belnet's two data centres (IKEv2/IPsec with
the epoch key as RFC 8784 PPK, `required`). Each link has its own fibre, QKD pair,
KMEs and gateways, so a fault on one link must leave the other two untouched.

Timeline: the three links come up; Belnet DC2's KME goes dark: the IPsec link is
blocked once its key expires (random PPK, IKE SAs torn down) while the other two
keep rotating QKD-keyed epochs and carrying pings; the KME comes back and so does
the link. Then Ghent campus A's key pool is drained: that link goes on degraded
(ML-KEM-768 + X25519 only), the other two again untouched; the pool refills.

`FaultWatch` is what shows "untouched": it samples the bystander links during a
fault and keeps a ping stream through each; the demo prints its report and
tests/scenarios/test_beqci.py asserts it clean.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from qsgw_lab.scenarios.runner import Event, ScenarioRun
from qsgw_lab.sitelab import Site, Tunnel

# The three links, by the scenario's site names: (a, b) of each tunnel.
GHENT = ("ugenta", "ugentb")
REDU = ("redu", "transinne")
BELNET = ("belnet1", "belnet2")
LINKS = {"ghent": GHENT, "redu-transinne": REDU, "belnet": BELNET}

_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def link(run: ScenarioRun, name: str) -> Tunnel:
    return run.tunnel(*LINKS[name])


def kme_of(run: ScenarioRun, site_name: str) -> str:
    return run.scenario.kme_of(run.scenario.site(site_name))


def ends(run: ScenarioRun, t: Tunnel) -> list[dict[str, Any] | None]:
    """`qsgw status` of the tunnel's peer at each end (None: daemon not answering)."""
    return [run.peer(t, "a"), run.peer(t, "b")]


def states(run: ScenarioRun, t: Tunnel) -> tuple[str, str]:
    a, b = ((p or {}).get("state", "?") for p in ends(run, t))
    return str(a), str(b)


# ---------------------------------------------------------------------- faults

def kme_outage(run: ScenarioRun, kme_id: str) -> None:
    """Every call to that KME answered 503 until `restore`."""
    run.sitelab.set_fault(kme_id, outage=True)


def drain_pools(run: ScenarioRun, kme_id: str) -> None:
    """The KME's pools emptied and held empty until `restore` (then they refill)."""
    run.sitelab.set_fault(kme_id, empty_pools=True)


def restore(run: ScenarioRun) -> None:
    run.sitelab.clear_faults()


# ---------------------------------------------------------------------- IPsec

def ike_sas(site: Site, connection: str) -> list[dict[str, Any]]:
    """charon's IKE SAs of `connection` at `site` (vici list-sas)."""
    import vici

    from gateway.tunnels.strongswan_settings import TWIN_SUFFIX

    if site.charon is None:
        return []
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    try:
        sock.connect(str(site.charon.vici_socket))
        out: list[dict[str, Any]] = []
        session = vici.Session(sock)
        for name in (connection, connection + TWIN_SUFFIX):  # and its make-before-break twin
            for entry in session.list_sas({"ike": name}):
                out.extend(entry.values())
        return out
    except OSError:
        return []
    finally:
        sock.close()


def established_with_ppk(site: Site, connection: str) -> list[str]:
    """Unique IDs of the ESTABLISHED IKE SAs that used the PPK."""
    return [str(sa.get("uniqueid", b"").decode()) for sa in ike_sas(site, connection)
            if sa.get("state") == b"ESTABLISHED" and sa.get("ppk") == b"yes"]


def established(site: Site, connection: str) -> int:
    return sum(1 for sa in ike_sas(site, connection) if sa.get("state") == b"ESTABLISHED")


# ---------------------------------------------------------------------- isolation

@dataclass
class LinkReport:
    """What a bystander link did while another link was faulted."""

    label: str
    epochs: int = 0  # epochs made at both ends during the fault (the lower count)
    pings_sent: int = 0
    pings_received: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def pings_lost(self) -> int:
        return self.pings_sent - self.pings_received

    def line(self) -> str:
        verdict = "untouched" if not self.problems else "AFFECTED: " + "; ".join(
            sorted(set(self.problems))[:3])
        return (f"  {self.label:18} {self.epochs} QKD epochs meanwhile, pings "
                f"{self.pings_received}/{self.pings_sent}, {verdict}")


class FaultWatch:
    """Watch the links a fault must not touch, from the moment it is injected.

    A thread samples both ends of every bystander link in `qsgw status` every
    half second: state `ok`, QKD among the key sources, no failed handshake, no
    error and no tunnel drop since the watch began. A ping stream (every 0.25 s)
    runs through each bystander tunnel meanwhile. `finish()` (or leaving the
    `with` block) stops both, reads
    what the bystanders' audit trails recorded meanwhile (no alarm, no failed or
    QKD-less epoch) and gives one report per link.
    """

    def __init__(self, run: ScenarioRun, bystanders: Iterable[Tunnel],
                 interval_s: float = 0.5) -> None:
        self.run = run
        self.tunnels = list(bystanders)
        self.since = time.time()
        self.samples = 0
        self.reports = {run.label(t): LinkReport(run.label(t)) for t in self.tunnels}
        self._epochs0 = {run.label(t): run.epochs_made(t) for t in self.tunnels}
        self._downs0 = {run.label(t): [int((p or {}).get("tunnel_downs", 0))
                                        for p in ends(run, t)] for t in self.tunnels}
        self._audit0 = {s.name: len(run.audit(s.name)) for t in self.tunnels
                        for s in (t.a, t.b)}
        self._pings = {run.label(t): self._pinger(t) for t in self.tunnels}
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._loop, args=(interval_s,),
                                        name="beqci-watch", daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()  # no thread or ping left behind, whatever happened

    def _pinger(self, t: Tunnel) -> subprocess.Popen[str]:
        source = ["-I", t.ip_a] if t.kind == "ipsec" else []
        return self.run.lab.popen(t.a.name, ["ping", "-n", "-i", "0.25", "-W", "1", *source,
                                             t.ip_b], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sample()

    def sample(self) -> None:
        for t in self.tunnels:
            label = self.run.label(t)
            report = self.reports[label]
            for side, st, downs0 in zip("ab", ends(self.run, t), self._downs0[label],
                                        strict=True):
                who = (t.a if side == "a" else t.b).gateway_id
                if st is None:
                    report.problems.append(f"{who}: daemon not answering")
                    continue
                if st["state"] != "ok":
                    report.problems.append(f"{who}: state {st['state']}")
                if "QKD" not in st["sources"]:
                    report.problems.append(f"{who}: epoch {st['epoch']} without QKD")
                if st["consecutive_failures"]:
                    report.problems.append(f"{who}: {st['consecutive_failures']} failed "
                                           "handshakes")
                if (st.get("last_error_at") or 0) >= self.since:
                    report.problems.append(f"{who}: error {st.get('last_error')}")
                if int(st.get("tunnel_downs", 0)) != downs0:
                    report.problems.append(f"{who}: tunnel went down "
                                           f"({st.get('last_tunnel_down')})")
        self.samples += 1

    def epochs_since(self) -> dict[str, int]:
        """Epochs each bystander made since the watch began."""
        return {self.run.label(t): self.run.epochs_made(t) - self._epochs0[self.run.label(t)]
                for t in self.tunnels}

    def hold(self, epochs: int = 2, timeout_s: float = 30.0) -> bool:
        """Keep the fault in place until every bystander has rotated `epochs` times
        under it (so that "untouched" covers rekeys, not just a quiet moment), or
        until a bystander shows a problem. True when they all rotated."""
        def done() -> bool:
            if any(r.problems for r in self.reports.values()):
                return True
            return min(self.epochs_since().values()) >= epochs
        self.run.sitelab.wait_for(done, timeout_s, 0.5)
        return min(self.epochs_since().values()) >= epochs

    def _audit_problems(self, site: Site) -> list[str]:
        """What the site's audit trail recorded since the watch began that an operator
        would see as trouble: an alarm, a failed epoch, an epoch without QKD."""
        out = []
        for rec in self.run.audit(site.name)[self._audit0[site.name]:]:
            kind = rec.get("type")
            if kind == "alarm":
                out.append(f"{site.gateway_id}: alarm {rec.get('alarm')} {rec.get('action')}")
            elif kind == "epoch" and rec.get("outcome") != "made":
                out.append(f"{site.gateway_id}: epoch {rec.get('epoch')} failed "
                           f"({rec.get('reason')})")
            elif kind == "epoch" and (rec.get("degraded") or not rec.get("qkd_key_ids")):
                out.append(f"{site.gateway_id}: epoch {rec.get('epoch')} without QKD")
        return out

    def finish(self) -> dict[str, LinkReport]:
        if self._finished:
            return self.reports
        self._finished = True
        self._stop.set()
        self._thread.join(10)
        self.sample()
        for t in self.tunnels:
            label = self.run.label(t)
            report = self.reports[label]
            report.problems += self._audit_problems(t.a) + self._audit_problems(t.b)
            report.epochs = self.epochs_since()[label]
            proc = self._pings[label]
            proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            match = _PING_SUMMARY.search(out or "")
            if match:
                report.pings_sent, report.pings_received = int(match[1]), int(match[2])
        return self.reports


# ---------------------------------------------------------------------- the demo

def demo(run: ScenarioRun, seconds: float, say: Callable[[str], None]) -> None:
    say("  sites: " + "; ".join(f"{s.gateway} ({s.role})" for s in run.scenario.sites))
    for spec in run.scenario.tunnels:
        a, b = spec.between
        say(f"  link {a}-{b}: {spec.kind}, policy {spec.policy}, KMEs "
            f"{kme_of(run, a)} / {kme_of(run, b)}")
    run.start()
    for t in run.tunnels.values():
        run.wait_ping(t, 30)
    belnet, ghent = link(run, "belnet"), link(run, "ghent")
    belnet_kme, ghent_kme = kme_of(run, BELNET[1]), kme_of(run, GHENT[0])
    watch: list[FaultWatch] = []

    def fault(faulted: Tunnel, inject: Callable[[], None]) -> Callable[[], None]:
        def go() -> None:
            watch.append(FaultWatch(run, [t for t in run.tunnels.values() if t is not faulted]))
            inject()
        return go

    def heal(faulted: Tunnel) -> None:
        for site, st in zip((faulted.a, faulted.b), ends(run, faulted), strict=True):
            st = st or {}
            err = st.get("last_error") or "-"
            if (st.get("last_error_at") or 0) < (st.get("installed_at") or 0):
                err = "-"  # older than the key in use: history
            say(f"  {site.gateway_id}: {st.get('state', '?')}, sources "
                f"{'+'.join(st.get('sources', ())) or '-'}, last error {err[:96]}")
        if faulted.kind == "ipsec":
            say(f"  IKE SAs established: {established(faulted.a, faulted.if_a)} at "
                f"{faulted.a.gateway_id}, {established(faulted.b, faulted.if_b)} at "
                f"{faulted.b.gateway_id}")
        restore(run)
        say("  meanwhile the other two links:")
        for report in watch.pop().finish().values():
            say(report.line())

    run.monitor(seconds, [
        Event(seconds * 0.15, f"{belnet_kme} outage (every call answers 503): the Belnet "
              "IPsec link is `required`, so it is blocked once its key expires",
              fault(belnet, lambda: kme_outage(run, belnet_kme))),
        Event(seconds * 0.45, f"{belnet_kme} back", lambda: heal(belnet)),
        Event(seconds * 0.55, f"{ghent_kme}'s key pool drained and held empty: the Ghent "
              "link is `preferred`, so it goes on with ML-KEM-768 + X25519, degraded",
              fault(ghent, lambda: drain_pools(run, ghent_kme))),
        Event(seconds * 0.8, f"{ghent_kme}'s pool refills", lambda: heal(ghent)),
    ], say=say)
    if watch:  # a short run ended mid-fault
        restore(run)
        watch.pop().finish()
