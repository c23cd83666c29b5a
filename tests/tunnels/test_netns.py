"""NetnsLab: what it makes is reachable, and everything is gone afterwards."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from qsgw_lab.netns import LabBusy, NetnsError, NetnsLab, PrefixLock, cleanup_stale, require_root


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_sites_ping_v4_and_v6_then_all_removed() -> None:
    with NetnsLab() as lab:
        a, b = lab.add_namespace("a"), lab.add_namespace("b")
        link = lab.connect("a", "b", ["192.0.2.1/24", "fd00:1::1/64"],
                           ["192.0.2.2/24", "fd00:1::2/64"])
        assert {a, b} <= set(netns.listnetns())
        assert lab.suffix in a and lab.suffix in b
        assert link.ifname_a in lab.interfaces("a")
        assert lab.wait_ping("a", "192.0.2.2", timeout_s=5)
        assert lab.wait_ping("b", "fd00:1::1", timeout_s=5)
        proc = lab.popen("b", ["sleep", "60"])
        shell = lab.popen("a", ["sh", "-c", "sleep 60 & wait"])
    assert a not in netns.listnetns() and b not in netns.listnetns()
    assert proc.poll() is not None and shell.poll() is not None


def test_exception_inside_still_cleans_up() -> None:
    names: list[str] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), NetnsLab() as lab:
        names.append(lab.add_namespace("x"))
        names.append(lab.add_namespace("y"))
        lab.connect("x", "y")
        # Ignores SIGTERM: close() must escalate to SIGKILL within its bound.
        p = lab.popen("x", ["sh", "-c", "trap '' TERM; sleep 60"])
        pids.append(p.pid)
        raise RuntimeError("boom")
    assert not set(names) & set(netns.listnetns())
    assert not _alive(pids[0])


def test_routes_and_a_bridge_for_three_sites() -> None:
    with NetnsLab(term_timeout_s=1.0) as lab:
        lab.add_bridge("core")
        for i, name in enumerate(("s1", "s2", "s3"), start=1):
            lab.add_namespace(name)
            lab.attach(name, [f"198.51.100.{i}/24"])
        assert lab.wait_ping("s1", "198.51.100.3", timeout_s=5)
        assert lab.wait_ping("s3", "198.51.100.2", timeout_s=5)
        # A route through s2 to a prefix s2 holds on its loopback.
        lab.add_address("s2", "lo", "203.0.113.9/32")
        assert not lab.ping("s1", "203.0.113.9")
        lab.add_route("s1", "203.0.113.9/32", gateway="198.51.100.2")
        assert lab.ping("s1", "203.0.113.9")


def test_run_captures_output_and_bounds_time() -> None:
    with NetnsLab() as lab:
        lab.add_namespace("a")
        res = lab.run("a", ["ip", "-o", "link", "show"], timeout=5)
        assert res.returncode == 0 and "lo" in res.stdout
        with pytest.raises(NetnsError, match="ran past"):
            lab.run("a", ["sleep", "5"], timeout=0.5)
        with pytest.raises(NetnsError, match="exited"):
            lab.run("a", ["ip", "link", "show", "nosuchif0"], check=True)
        with pytest.raises(NetnsError, match="no namespace"):
            lab.run("nope", ["true"])


def test_cleanup_stale_removes_leftovers_of_a_crashed_run() -> None:
    lab = NetnsLab(prefix="qsgwstale")
    name = lab.add_namespace("crash")
    proc = lab.popen("crash", ["sleep", "60"])
    # Simulate a crash: the lab is never closed.
    try:
        # Popen returns before `ip netns exec` has entered the namespace.
        for _ in range(100):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=5, check=False).stdout.split()
            if str(proc.pid) in pids:
                break
            time.sleep(0.05)
        removed = cleanup_stale("qsgwstale")
        assert name in removed
        assert name not in netns.listnetns()
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_cleanup_stale_refuses_an_empty_prefix() -> None:
    with pytest.raises(ValueError, match="prefix"):
        cleanup_stale("")


def test_a_second_run_on_a_prefix_is_refused_not_wiped(tmp_path: Path) -> None:
    lab = NetnsLab(prefix="qsgwlock")
    try:
        with PrefixLock("qsgwlock", lock_dir=str(tmp_path)):
            name = lab.add_namespace("live")
            # A second demo: refused, and the first run's namespace survives.
            with pytest.raises(LabBusy, match=rf"pid {os.getpid()}"):
                PrefixLock("qsgwlock", lock_dir=str(tmp_path))
            assert name in netns.listnetns()
        # Once the first run is gone, the next one takes the lock and clears
        # what the first left behind (here: its lab was never closed).
        with PrefixLock("qsgwlock", lock_dir=str(tmp_path)):
            assert name not in netns.listnetns()
    finally:
        lab.close()
