"""An HA pair in namespaces: site A as two members (same identity, SAE certificate,
WireGuard key and config) with keepalived moving a virtual address, site B as one
gateway, PostgreSQL in a namespace of its own, the KME simulator over mTLS.

Used by tests/ha and bench/ha.py. A member "dies" as a box does: every process
in its namespace is SIGKILLed and its link cut (the address keepalived had put
there would otherwise linger); revive() brings it back as the standby
(keepalived's nopreempt keeps the survivor active). B pings A's inner address
over the tunnel to measure each failover.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsgw_lab.netns import _pids_in
from qsgw_lab.pgserver import PgServer
from qsgw_lab.sitelab import CONTROL_PORT, Site, SiteLab, Tunnel

VIP = "198.51.100.100"
PG_ADDRESS = "198.51.100.240"
PG_NS = "pg"
VRRP_ADVERT_S = 0.2  # VRRPv3 centiseconds: the backup takes over after ~3.5 adverts
PING_INTERVAL_S = 0.05
METRICS_PORT = 9814  # each member's Prometheus endpoint, on its namespace's loopback
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+) .*time=([\d.]+) ms")


@dataclass
class Member:
    site: Site
    name: str  # a1 | a2
    priority: int
    keepalived: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class HaLab:
    """build() the pair; kill()/revive() members; ping_gap() measures a failover."""

    def __init__(self, sites: SiteLab) -> None:
        self.sites = sites
        self.lab = sites.lab
        self.pg: PgServer | None = None
        self.members: dict[str, Member] = {}
        self.b: Site | None = None
        self.tunnel: Tunnel | None = None
        self._pinger: subprocess.Popen[str] | None = None

    # ------------------------------------------------------------------ build

    def build(self, policy: str = "required", rekey: float = 5.0, lifetime: float = 30.0,
              kind: str = "wireguard") -> None:
        s = self.sites
        a1 = s.add_site("a1", "gw-inta", "SAE_INTA_GW", "KME_INTA")
        b = s.add_site("b", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
        a2 = self._clone_member(a1, "a2")
        self.b = b
        self.lab.add_namespace(PG_NS)
        self.lab.attach(PG_NS, [f"{PG_ADDRESS}/24"])
        self.pg = PgServer(host=PG_ADDRESS, port=5432, allow="198.51.100.0/24",
                           popen=lambda argv: self.lab.popen(PG_NS, argv))
        self.pg.start()
        if kind == "wireguard":
            self.tunnel = s.add_wireguard_tunnel(a1, b, policy, rekey, lifetime)
        else:
            self.tunnel = s.add_ipsec_tunnel(a1, b, policy, rekey, lifetime)
        # B knows the pair by its virtual address only: control and WireGuard endpoint.
        for peer in b.peers:
            peer["control"] = f"{VIP}:{CONTROL_PORT}"
            tun = peer["tunnel"]
            if "endpoint" in tun:
                tun["endpoint"] = re.sub(r"^[^:]+:", f"{VIP}:", tun["endpoint"])
            if "remote_addrs" in tun:
                tun["remote_addrs"] = [VIP]
        # a2: a1's peers, with a2's own interface name (UAPI sockets are shared) or
        # its own charon.
        a2.peers = copy.deepcopy(a1.peers)
        for peer in a2.peers:
            tun = peer["tunnel"]
            if "interface" in tun:
                tun["interface"] = self.lab.unique("wg0c")
            if "local_addrs" in tun:
                tun["local_addrs"] = [VIP]
                tun["vici_socket"] = f"unix://{s._charon(a2).vici_socket}"
                self.lab.add_address(a2.name, "lo", f"{self.inner_a()}/32")
        for peer in a1.peers:
            if "local_addrs" in peer["tunnel"]:
                peer["tunnel"]["local_addrs"] = [VIP]
        s.start_simulator()
        for name, site, prio in (("a1", a1, 150), ("a2", a2, 100)):
            self.members[name] = Member(site, name, prio)
        for name, m in self.members.items():
            s.write_config(m.site, self._member_config(name))
        s.write_config(b)
        self._keepalived(self.members["a1"])
        assert self.wait_active("a1", 15), "a1 did not take the virtual address"
        self._keepalived(self.members["a2"])
        for m in self.members.values():
            s.start_daemon(m.site)
        s.start_daemon(b)

    def _clone_member(self, a1: Site, name: str) -> Site:
        """A second member of a1's site: same identity and keys, its own namespace."""
        s = self.sites
        ip = f"198.51.100.{len(s.sites) + 1}"
        site = Site(name, a1.gateway_id, a1.sae_id, a1.kme_id, ip, s.workdir / name,
                    identity_text=a1.identity_text)
        site.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copytree(a1.dir / "identity", site.dir / "identity")
        self.lab.add_namespace(name)
        self.lab.attach(name, [f"{ip}/24"])
        s.sites[name] = site
        return site

    def _member_config(self, name: str) -> dict[str, Any]:
        assert self.pg is not None
        return {"control": {"listen": f"0.0.0.0:{CONTROL_PORT}"},
                "journal": {"backend": "postgresql", "conninfo": self.pg.conninfo(),
                            "password_file": str(self.pg.password_file)},
                "ha": {"virtual_address": VIP, "member": name, "check_interval_s": 0.05},
                "telemetry": {"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}}}

    def _keepalived(self, m: Member) -> None:
        conf = m.site.dir / "keepalived.conf"
        others = [o.site.underlay_ip for o in self.members.values() if o is not m]
        # Unicast adverts to the other member: no multicast group to (re)join after a
        # link comes back, which made a revived member miss adverts and preempt.
        unicast = (f"  unicast_src_ip {m.site.underlay_ip}\n  unicast_peer {{\n"
                   + "".join(f"    {ip}\n" for ip in others) + "  }\n")
        for stale in ("keepalived.pid", "vrrp.pid"):  # a SIGKILLed one leaves its pid behind
            (m.site.dir / stale).unlink(missing_ok=True)
        conf.write_text(
            "global_defs {\n"
            f"  router_id qsgw_{m.name}\n  vrrp_version 3\n"
            "  vrrp_garp_master_delay 0\n  vrrp_garp_master_repeat 2\n"
            # After a split brain the peer's ARP entry may point at the member that
            # steps down: it tells the winner so (an advert), the winner re-sends its
            # GARPs, and a GARP every 2 s mends what both miss.
            "  vrrp_higher_prio_send_advert\n  vrrp_garp_master_refresh 2\n"
            # Realtime scheduling: a busy box (here: two cores, many daemons) must not
            # starve the adverts for 3 intervals, or the backup takes over too.
            "  vrrp_rt_priority 50\n"
            "}\n"
            "vrrp_instance QSGW {\n  state BACKUP\n  nopreempt\n  interface eth0\n"
            f"  virtual_router_id 51\n  priority {m.priority}\n  advert_int {VRRP_ADVERT_S}\n"
            + unicast +
            f"  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n"
            "}\n")
        d = m.site.dir
        log = (d / "keepalived.log").open("ab")
        m.keepalived = self.lab.popen(m.site.name, [
            "keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", str(conf),
            "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid")],
            stdout=log, stderr=subprocess.STDOUT)

    # ------------------------------------------------------------------ faults

    def kill(self, name: str) -> float:
        """SIGKILL everything in the member's namespace and cut its link; the time it died."""
        m = self.members[name]
        ns = self.lab.ns_name(m.site.name)
        for pid in _pids_in(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.lab.run(m.site.name, ["ip", "link", "set", "eth0", "down"], timeout=10)
        died = time.time()  # from here nothing of it answers (packets before may have)
        # A box that is off holds no address: the one keepalived left there goes too.
        self.lab.run(m.site.name, ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"], timeout=10)
        for proc in (m.keepalived, m.site.process):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        m.keepalived, m.site.process = None, None
        return died

    def revive(self, name: str) -> None:
        """The member boots again: link up, without the stale address, as the standby."""
        m = self.members[name]
        self.lab.run(m.site.name, ["ip", "link", "set", "eth0", "up"], timeout=10, check=True)
        if m.site.charon is not None:  # killed with the rest: a fresh one, as at boot
            m.site.charon.restart()
        self._keepalived(m)
        self.sites.start_daemon(m.site)

    def block_vrrp(self, blocked: bool) -> None:
        """Split brain: each member drops the other's VRRP adverts (IP protocol 112)."""
        for m in self.members.values():
            if blocked:
                script = ("add table inet qsgwha\n"
                          "add chain inet qsgwha in { type filter hook input priority 0 ; }\n"
                          "add rule inet qsgwha in ip protocol vrrp drop\n")
                subprocess.run(self.lab.argv_in(m.site.name, ["nft", "-f", "-"]), input=script,
                               text=True, capture_output=True, timeout=10, check=True)
            else:
                self.lab.run(m.site.name, ["nft", "delete", "table", "inet", "qsgwha"],
                             timeout=10)

    def cut_database(self, cut: bool) -> None:
        """The database's namespace drops PostgreSQL's packets (no refusal: a partition)."""
        if cut:
            script = ("add table inet qsgwpg\n"
                      "add chain inet qsgwpg in { type filter hook input priority 0 ; }\n"
                      "add rule inet qsgwpg in tcp dport 5432 drop\n")
            subprocess.run(self.lab.argv_in(PG_NS, ["nft", "-f", "-"]), input=script,
                           text=True, capture_output=True, timeout=10, check=True)
        else:
            self.lab.run(PG_NS, ["nft", "delete", "table", "inet", "qsgwpg"], timeout=10)

    # ------------------------------------------------------------------ observation

    def holds_vip(self, name: str) -> bool:
        res = self.lab.run(self.members[name].site.name, ["ip", "-o", "addr", "show", "dev",
                                                          "eth0"], timeout=5)
        return f" {VIP}/" in res.stdout

    def role(self, name: str) -> str | None:
        doc = self.sites.status(self.members[name].site)
        return None if doc is None else doc.get("role")

    def wait_active(self, name: str, timeout_s: float) -> bool:
        return self.sites.wait_for(lambda: self.holds_vip(name), timeout_s, 0.05)

    def active(self) -> str | None:
        holders = [n for n in self.members if self.holds_vip(n)]
        return holders[0] if len(holders) == 1 else None

    def metrics(self, name: str) -> str:
        """The member's Prometheus exposition text, scraped inside its namespace."""
        script = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                  f"'http://127.0.0.1:{METRICS_PORT}/metrics',timeout=5).read().decode())")
        return self.lab.run(self.members[name].site.name, [sys.executable, "-c", script],
                            timeout=20, check=True).stdout

    def b_epoch(self) -> int:
        assert self.b is not None
        peer = self.sites.peer_status(self.b, "gw-inta") or {}
        return int(peer.get("epoch", 0))

    def inner_a(self) -> str:
        assert self.tunnel is not None
        return self.tunnel.ip_a

    def start_pinger(self) -> None:
        """B pings A's inner address every 50 ms; -D stamps each reply (epoch seconds)."""
        assert self.b is not None
        self._pinger = self.lab.popen(self.b.name, [
            "ping", "-n", "-D", "-i", str(PING_INTERVAL_S), "-W", "1", self.inner_a()],
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self._replies: list[tuple[float, int]] = []
        pinger = self._pinger

        def read() -> None:
            assert pinger.stdout is not None
            for line in pinger.stdout:
                got = _REPLY.match(line)
                if got:  # stamped when the request left: a late reply is no recovery
                    sent = float(got.group(1)) - float(got.group(3)) / 1e3
                    self._replies.append((sent, int(got.group(2))))

        threading.Thread(target=read, daemon=True).start()

    def failover(self, died: float, timeout_s: float) -> tuple[float, int] | None:
        """(seconds from `died` to the first echo request sent after it that was answered,
        echo requests lost), None when traffic did not come back within the bound."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = [r for r in self._replies if r[0] < died]
            after = [r for r in self._replies if r[0] > died]
            if after:
                last_seq = before[-1][1] if before else after[0][1] - 1
                return after[0][0] - died, max(0, after[0][1] - last_seq - 1)
            time.sleep(0.02)
        return None

    def wait_traffic(self, timeout_s: float) -> bool:
        assert self.b is not None
        b = self.b
        return self.sites.wait_for(lambda: self.lab.ping(b.name, self.inner_a(), 1, 1),
                                   timeout_s, 0.05)

    def timeline(self, survivor: str, since: float) -> dict[str, float | None]:
        """Seconds from `since` (a death) to the survivor's takeover and to B's next epoch,
        read from the daemons' JSON logs."""
        assert self.b is not None
        took = _first_log_time(self.members[survivor].site.log_path, since, "is now ACTIVE")
        keyed = _first_log_time(self.b.log_path, since, "installed")
        return {"takeover_s": None if took is None else round(took - since, 3),
                "b_epoch_s": None if keyed is None else round(keyed - since, 3)}

    def key_ids_in_db(self) -> list[str]:
        assert self.pg is not None
        return [r[0] for r in self.pg.query("SELECT key_id FROM qsgw_key_ids")]

    def epochs_in_db(self) -> list[list[str]]:
        assert self.pg is not None
        return self.pg.query("SELECT peer_id, epoch, member FROM qsgw_epochs")

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def _first_log_time(path: Path, since: float, needle: str) -> float | None:
    """The time of the first JSON log line after `since` whose message holds `needle`."""
    from datetime import datetime

    for line in path.read_text(errors="replace").splitlines():
        if needle not in line:
            continue
        try:
            doc = json.loads(line)
            at = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError):
            continue
        if at > since and needle in doc.get("msg", ""):
            return at
    return None
