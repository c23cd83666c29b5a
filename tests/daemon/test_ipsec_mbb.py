"""IPsec make-before-break through two `qsgw run` daemons: 30 rotations, no lost ping, never
a moment without an IKE SA keyed with the PPK on either charon."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import vici
from _requires import require

from qsgw_lab.sitelab import Site, SiteLab

from .conftest import site_lab

pytestmark = pytest.mark.netns

ROTATIONS = 30
SAMPLE_S = 0.05
PING_INTERVAL_S = 0.05


@pytest.fixture
def mbb_sites() -> Iterator[SiteLab]:
    require("charon", "unshare")
    with site_lab("m12mbb") as sites:
        yield sites


def ppk_sas(vici_socket: Path) -> set[bytes]:
    """uniqueids of the charon's established IKE SAs that have the PPK: one list-sas over
    all connections (the tunnel's two), so that one answer is one moment."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(vici_socket))
    try:
        return {sa["uniqueid"] for entry in vici.Session(sock).list_sas()
                for sa in entry.values()
                if sa.get("state") == b"ESTABLISHED" and sa.get("ppk") == b"yes"}
    finally:
        sock.close()


@dataclass
class Sampler:
    """Samples both charons every SAMPLE_S in a thread; stops at `stop` or after max_s."""

    sockets: dict[str, Path]
    max_s: float
    samples: int = 0
    zero_at: dict[str, list[float]] = field(default_factory=dict)
    seen: dict[str, set[bytes]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < self.max_s:
            for name, path in self.sockets.items():
                try:
                    ids = ppk_sas(path)
                except (OSError, vici.exception.SessionException) as exc:
                    self.errors.append(f"{name}: {exc!r}")
                    continue
                self.seen.setdefault(name, set()).update(ids)
                if not ids:
                    self.zero_at.setdefault(name, []).append(round(time.monotonic() - t0, 3))
            self.samples += 1
            self.stop.wait(SAMPLE_S)


def _epoch(sites: SiteLab, site: Site, peer: str) -> int:
    st = sites.peer_status(site, peer)
    return -1 if st is None else int(st["epoch"])


def test_thirty_rotations_lose_no_ping_and_never_leave_zero_ike_sas(
        mbb_sites: SiteLab) -> None:
    sites = mbb_sites
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    t = sites.add_ipsec_tunnel(a, b, "required", rekey_interval_s=1.0, key_lifetime_s=10.0)
    sites.start_simulator()
    for s in (a, b):
        sites.write_config(s)
        sites.start_daemon(s)

    def both_at(n: int) -> bool:
        ea, eb = _epoch(sites, a, b.gateway_id), _epoch(sites, b, a.gateway_id)
        return min(ea, eb) >= n

    assert sites.wait_for(lambda: both_at(1), 40), \
        (sites.peer_status(a, b.gateway_id), sites.peer_status(b, a.gateway_id))

    def ping_once() -> bool:
        res = sites.lab.run(a.name, ["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", t.ip_a,
                                     t.ip_b], timeout=5)
        return res.returncode == 0
    assert sites.wait_for(ping_once, 15), "no traffic over IPsec"
    first = _epoch(sites, a, b.gateway_id)

    sampler = Sampler({a.name: a.charon.vici_socket, b.name: b.charon.vici_socket}, max_s=150)
    thread = threading.Thread(target=sampler.run, name="ike-sa-sampler", daemon=True)
    # -w bounds ping even if this test dies before its SIGINT.
    ping = sites.lab.popen(a.name, ["ping", "-n", "-q", "-i", str(PING_INTERVAL_S), "-W", "1",
                                    "-w", "150", "-I", t.ip_a, t.ip_b],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert sites.wait_for(lambda: both_at(first + ROTATIONS), 120), \
            (sites.peer_status(a, b.gateway_id), sites.peer_status(b, a.gateway_id))
        time.sleep(0.5)  # the last rotation's old IKE SA goes, under the ping
    finally:
        ping.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
        out, _ = ping.communicate(timeout=10)
        sampler.stop.set()
        thread.join(10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, received = int(m.group(1)), int(m.group(2))
    rotations = _epoch(sites, a, b.gateway_id) - first
    assert rotations >= ROTATIONS
    assert sent >= ROTATIONS * 0.5 / PING_INTERVAL_S, out  # the ping ran throughout
    assert sent == received, f"lost {sent - received} of {sent} pings over {rotations} rotations"
    assert not sampler.errors, sampler.errors[:5]
    assert sampler.samples >= ROTATIONS * 10, sampler.samples
    # Every epoch was a new IKE SA (with the PPK) on both charons...
    for name in (a.name, b.name):
        assert len(sampler.seen.get(name, ())) >= rotations, (name, len(sampler.seen[name]))
    # ...and at no sampled moment had either charon none.
    assert not sampler.zero_at, f"moments with no IKE SA with PPK: {sampler.zero_at}"
    # No rotation looked like the tunnel going down, to either daemon.
    for site, peer in ((a, b), (b, a)):
        st = sites.peer_status(site, peer.gateway_id) or {}
        assert st.get("state") == "ok", st
        assert st.get("tunnel_downs") == 0, st.get("last_tunnel_down")
