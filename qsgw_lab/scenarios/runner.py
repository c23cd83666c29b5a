"""A scenario running: its sites in namespaces (SiteLab), the KME simulator on its
topology, a `qsgw run` per site, and what the demo and the tests look at:
pings through every tunnel, each end's `qsgw status`, the key_ID journals and the
audit trails. Everything goes when the run closes.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsgw_lab.netns import NetnsLab
from qsgw_lab.scenarios.checks import ConsumedKey, key_reuse_problems
from qsgw_lab.scenarios.spec import Scenario, SiteSpec, TunnelSpec
from qsgw_lab.sitelab import Site, SiteLab, Tunnel
from qsgw_lab.verdict import PingTally, clip, consumed_keys, once_only_check, why

RTT = re.compile(r"time=([\d.]+) ms")


@dataclass(frozen=True)
class Event:
    """Something the demo does at `at_s` seconds (a fault, a node joining)."""

    at_s: float
    what: str
    action: Callable[[], object]


class ScenarioRun:
    def __init__(self, scenario: Scenario, lab: NetnsLab, workdir: Path, *,
                 record_keys: bool = False, broker: bool = False) -> None:
        self.scenario = scenario
        self.lab = lab
        self.workdir = workdir
        self.sitelab = SiteLab(lab, workdir, scenario.topology_path)
        self.record_keys = record_keys
        self.with_broker = broker
        self.sites: dict[str, Site] = {}
        self.tunnels: dict[frozenset[str], Tunnel] = {}
        self.specs: dict[frozenset[str], TunnelSpec] = {}
        self.started = 0.0
        self.pings = PingTally()

    # ------------------------------------------------------------------ building

    def _add_site(self, spec: SiteSpec) -> Site:
        site = self.sitelab.add_site(spec.name, spec.gateway, spec.sae,
                                     self.scenario.kme_of(spec))
        self.sites[spec.name] = site
        return site

    def _add_tunnel(self, spec: TunnelSpec) -> Tunnel:
        a, b = (self.sites[n] for n in spec.between)
        rekey = spec.rekey_interval_s or self.scenario.rekey_interval_s
        lifetime = spec.key_lifetime_s or self.scenario.key_lifetime_s
        add = (self.sitelab.add_ipsec_tunnel if spec.kind == "ipsec"
               else self.sitelab.add_wireguard_tunnel)
        tunnel = add(a, b, spec.policy, rekey, lifetime)
        self.tunnels[frozenset(spec.between)] = tunnel
        self.specs[frozenset(spec.between)] = spec
        return tunnel

    def start(self) -> None:
        """Sites that start at once, their tunnels, the simulator and the daemons."""
        for spec in self.scenario.sites:
            if spec.start == "at_once":
                self._add_site(spec)
        for t in self.scenario.tunnels:
            if all(n in self.sites for n in t.between):
                self._add_tunnel(t)
        self.sitelab.start_simulator(record_keys=self.record_keys)
        if self.with_broker:
            self.sitelab.start_broker()
        for site in self.sites.values():
            self.sitelab.write_config(site)
            self.sitelab.start_daemon(site)
        self.started = time.monotonic()

    def join(self, name: str, ready_timeout_s: float = 0.0) -> list[Tunnel]:
        """Add a site to the running network: its daemon starts with a tunnel to every
        running site the scenario pairs it with, and those sites' daemons take the new
        peer in on SIGHUP (their other peers are left alone). With `ready_timeout_s`,
        the SIGHUPs wait (at most that long) until the new daemon answers on its status
        socket, i.e. all its sessions have started, so that the others' first
        handshakes with it do not meet a gateway still starting."""
        site = self._add_site(self.scenario.site(name))
        added = [self._add_tunnel(t) for t in self.scenario.tunnels_of(name)
                 if all(n in self.sites for n in t.between)]
        self.sitelab.write_config(site)
        self.sitelab.start_daemon(site)
        if ready_timeout_s > 0:
            self.sitelab.wait_for(lambda: self.sitelab.status(site) is not None,
                                  ready_timeout_s)
        for t in added:
            other = t.a if t.b is site else t.b
            self.sitelab.write_config(other)
            self.sitelab.signal_daemon(other, signal.SIGHUP)
        return added

    def close(self) -> None:
        self.sitelab.close()

    # ------------------------------------------------------------------ looking

    def tunnel(self, a: str, b: str) -> Tunnel:
        return self.tunnels[frozenset((a, b))]

    def label(self, t: Tunnel) -> str:
        return f"{t.a.name}-{t.b.name}"

    def data_plane(self, tunnels: Iterable[Tunnel]) -> str:
        """Each end's state, sources, tunnel detail (the daemon's view of the last
        handshake) and WireGuard's bytes in and out (an initiation sent and never
        answered shows as tx alone), for a failure message."""
        lines = []
        for t in tunnels:
            for side, site, ifname in (("a", t.a, t.if_a), ("b", t.b, t.if_b)):
                st = self.peer(t, side) or {}
                wg = "-"
                if t.kind == "wireguard":
                    res = self.lab.run(site.name, ["wg", "show", ifname, "transfer"])
                    wg = " ".join(res.stdout.split()[1:]) or res.stderr.strip()[:200]  # rx tx
                lines.append(f"{self.label(t)}/{side}: {st.get('state')} epoch {st.get('epoch')} "
                             f"sources {'+'.join(st.get('sources') or []) or '-'} "
                             f"{st.get('tunnel_detail')!r}; wg rx/tx: {wg}")
        return "\n".join(lines)

    def ping(self, t: Tunnel, count: int = 1) -> float | None:
        """Round trip in ms through the tunnel (inner addresses), None if lost."""
        source = ["-I", t.ip_a] if t.kind == "ipsec" else []
        res = self.lab.run(t.a.name, ["ping", "-n", "-c", str(count), "-W", "1", *source,
                                      t.ip_b], timeout=count + 5)
        rtts = RTT.findall(res.stdout)
        return float(rtts[-1]) if res.returncode == 0 and rtts else None

    def wait_ping(self, t: Tunnel, timeout_s: float) -> bool:
        return self.sitelab.wait_for(lambda: self.ping(t) is not None, timeout_s, 0.2)

    def peer(self, t: Tunnel, side: str = "a") -> dict[str, Any] | None:
        me, other = (t.a, t.b) if side == "a" else (t.b, t.a)
        return self.sitelab.peer_status(me, other.gateway_id)

    def wait_ok(self, timeout_s: float, tunnels: Iterable[Tunnel] | None = None) -> bool:
        """Both ends of every tunnel show `ok`. A tunnel's first data-plane handshake
        reaches `qsgw status` at the daemon's next liveness sample (every 2 s, of a
        view up to 2 s old), so a state read just after the first ping can still be
        `pending`."""
        chosen = list(tunnels) if tunnels is not None else list(self.tunnels.values())
        return self.sitelab.wait_for(
            lambda: all((self.peer(t, side) or {}).get("state") == "ok"
                        for t in chosen for side in ("a", "b")), timeout_s, 0.5)

    def epochs_made(self, t: Tunnel) -> int:
        """Epochs installed at both ends (the lower count of the two)."""
        counts = [int((p or {}).get("epochs_made", 0))
                  for p in (self.peer(t, "a"), self.peer(t, "b"))]
        return min(counts)

    def wait_rotations(self, n: int, timeout_s: float,
                       tunnels: Iterable[Tunnel] | None = None) -> bool:
        chosen = list(tunnels) if tunnels is not None else list(self.tunnels.values())
        return self.sitelab.wait_for(lambda: all(self.epochs_made(t) >= n for t in chosen),
                                     timeout_s, 0.5)

    def consumed_keys(self) -> dict[str, list[ConsumedKey]]:
        """Each gateway's journal of consumed QKD key_IDs (read-only)."""
        return consumed_keys(self.sites.values())

    def key_reuse_problems(self, consumed: dict[str, list[ConsumedKey]] | None = None
                           ) -> list[str]:
        """Every way a QKD key was used twice anywhere in the scenario (empty: none)."""
        delivered = {s.sae_id: self.sitelab.delivered(s.sae_id) for s in self.sites.values()}
        return key_reuse_problems(consumed or self.consumed_keys(), delivered)

    def audit(self, name: str, type: str | None = None, outcome: str | None = None,
              peer: str | None = None) -> list[dict[str, Any]]:
        """The site's audit records, optionally only those of one `type`
        ("epoch", "policy", "alarm", ...), `outcome` and `peer` (a gateway ID)."""
        path = self.sites[name].dir / "state" / "audit.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the writer thread's last line may be half written
            if (type is None or rec.get("type") == type) \
                    and (outcome is None or rec.get("outcome") == outcome) \
                    and (peer is None or rec.get("peer") == peer):
                out.append(rec)
        return out

    def pools(self) -> dict[str, dict[str, Any]]:
        return dict(self.sitelab.admin("GET", "/pools"))

    # ------------------------------------------------------------------ showing

    def row(self, t: Tunnel) -> str:
        st = self.peer(t)
        kind = "wg" if t.kind == "wireguard" else "ike"
        name = f"{t.a.name} -> {t.b.name} ({kind})"
        if st is None:
            return f"  {name:28} daemon not answering"
        rtt = self.ping(t)
        self.pings.record(self.label(t), rtt is not None)
        ping = "lost" if rtt is None else f"{rtt:.2f} ms"
        age = "-" if st["key_age_s"] is None else f"{st['key_age_s']:.0f}s"
        sources = "+".join(st["sources"]) or "-"
        err = st.get("last_error") or ""
        if st.get("installed_at") and (st.get("last_error_at") or 0) < st["installed_at"]:
            err = ""  # an error older than the key in use is history
        return (f"  {name:28} {st['policy']:9} {st['state']:9} {st['epoch']:5}  {age:>5}  "
                f"{sources:22} {ping:>9}  {clip(err, 44)}")

    def table(self, elapsed: float) -> str:
        head = (f"{elapsed:5.0f}s {'tunnel':28} {'policy':9} {'state':9} {'epoch':>5}  "
                f"{'age':>5}  {'key sources':22} {'ping':>9}  last error")
        return "\n".join([head, *(self.row(t) for t in self.tunnels.values())])

    def monitor(self, seconds: float, events: Sequence[Event] = (),
                every_s: float = 3.0, say: Callable[[str], None] = print) -> None:
        """The demo's loop: the status table every `every_s`, events when they fall due."""
        pending = sorted(events, key=lambda e: e.at_s)
        begin = time.monotonic()
        next_table = 0.0
        while (elapsed := time.monotonic() - begin) < seconds:
            while pending and pending[0].at_s <= elapsed:
                event = pending.pop(0)
                say(f"--- {elapsed:.0f}s: {event.what}")
                event.action()
            if elapsed >= next_table:
                say(self.table(elapsed))
                next_table += every_s
            time.sleep(0.2)

    def summary(self) -> list[str]:
        lines = []
        for key, t in self.tunnels.items():
            spec = self.specs[key]
            st = self.peer(t) or {}
            lines.append(f"  {self.label(t):24} {spec.kind:9} {spec.policy:9} "
                         f"{self.epochs_made(t):3} epochs, now {st.get('state', '?')}, "
                         f"{self.pings.line(self.label(t))}, "
                         f"sources {'+'.join(st.get('sources', [])) or '-'}")
        line, _problems = once_only_check(self.sitelab)
        lines.append(line)
        return lines

    def failures(self) -> list[str]:
        """What makes the run a failure, one line each: a tunnel that never carried a
        ping, with its own words for why, and any QKD key used twice."""
        out = []
        for t in self.tunnels.values():
            _sent, ok = self.pings.counts.get(self.label(t), [0, 0])
            if ok == 0:
                out.append(f"{self.label(t)} never carried a ping: {why(self.peer(t))}")
        _line, problems = once_only_check(self.sitelab)
        out += [f"key reuse: {p}" for p in problems]
        return out
