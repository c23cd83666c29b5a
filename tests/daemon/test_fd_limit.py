"""A responder with a small descriptor limit under a connection flood from the peer's
address: accept errors back off (few log lines), `qsgw status` answers, the peer rekeys."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsgw_lab.sitelab import CONTROL_PORT, Site, SiteLab, qsgw_argv

from .conftest import site_lab

ROOT = Path(__file__).resolve().parents[2]
SPAWN_NOFILE = 96  # the cap on control connections is sized from this at start


@pytest.fixture
def fdlab() -> Iterator[SiteLab]:
    with site_lab("qsjrn") as sites:
        yield sites

def _start_limited(sites: SiteLab, site: Site) -> None:
    sites.write_config(site)
    log = site.log_path.open("ab")
    # The limit is set in the child before `ip netns exec` execs the daemon (the same pid).
    site.process = sites.lab.popen(
        site.name, qsgw_argv("run", "-c", str(site.config_path)), stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                              (SPAWN_NOFILE, SPAWN_NOFILE)))


def _epoch(sites: SiteLab, site: Site, peer: Site) -> int:
    st = sites.peer_status(site, peer.gateway_id)
    return int(st["epoch"]) if st else 0


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_flood_at_the_descriptor_limit_backs_off_and_the_peer_rekeys(fdlab: SiteLab) -> None:
    a = fdlab.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = fdlab.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    fdlab.add_wireguard_tunnel(a, b, "required", 2.0, 20.0)
    fdlab.start_simulator()
    fdlab.write_config(a)
    fdlab.start_daemon(a)
    _start_limited(fdlab, b)  # b responds; a (gw-inta) initiates
    assert fdlab.wait_for(lambda: _epoch(fdlab, b, a) >= 2, 60)
    assert b.process is not None
    pid = b.process.pid
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert f"{SPAWN_NOFILE}" in next(x for x in limits.splitlines() if "open files" in x)
    # Lower the limit further while running, close to what is open: now the flood runs
    # into EMFILE on accept(), which the cap sized at start no longer prevents.
    tight = _fds(pid) + 10
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (tight, tight))
    offset = b.log_path.stat().st_size
    e0 = _epoch(fdlab, b, a)
    seconds = 16.0
    attacker = fdlab.lab.popen(a.name, [
        sys.executable, "-m", "qsgw_lab.floodlab",
        "--target", f"{b.underlay_ip}:{CONTROL_PORT}", "--claim", a.gateway_id,
        "--responder", b.gateway_id, "--identity-dir", str(a.dir / "identity"),
        "--seconds", str(seconds), "--rate", "40", "--holders", "24",
    ], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    answered = asked = max_fds = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        max_fds = max(max_fds, _fds(pid))
        asked += 1
        answered += fdlab.status(b) is not None
        time.sleep(0.5)
    attacker.communicate(timeout=30)
    assert b.process.poll() is None, "the daemon died"
    log = b.log_path.read_bytes()[offset:].decode(errors="replace")
    accept_lines = log.count("control accept failed")
    assert accept_lines >= 1, "the flood never reached the descriptor limit: nothing tested"
    assert max_fds <= tight
    # The status socket kept answering through the flood (a miss when every descriptor
    # was taken at that instant is allowed, a dead socket is not).
    assert answered >= asked * 0.7, (answered, asked, log[-2000:])
    # Accept errors back off (0.05 s doubling to 2 s) and are rate-limited: no spin.
    assert accept_lines <= 40, (accept_lines, log[-2000:])
    assert len(log.splitlines()) < 400, (len(log.splitlines()), log[-4000:])
    # The real peer kept rekeying (every 2 s), during and after the flood.
    assert fdlab.wait_for(lambda: _epoch(fdlab, b, a) >= e0 + 4, 20), log[-3000:]
    st = fdlab.peer_status(b, a.gateway_id)
    assert st is not None and st["state"] == "ok", st
