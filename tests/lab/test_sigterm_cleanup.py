"""A test run stopped with SIGTERM (a CI timeout) removes its namespaces and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _requires import require

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_mid_test_removes_the_labs_namespace_and_processes(tmp_path: Path) -> None:
    require("netns")
    prefix = f"qsterm{os.getpid() % 10000}"
    ready = tmp_path / "ready"
    env = {**os.environ, "VICTIM_PREFIX": prefix, "VICTIM_READY": str(ready)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "lab" / "_sigterm_victim.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the victim never built its lab"
            time.sleep(0.1)
        time.sleep(0.2)
        ns, pid = ready.read_text().split()
        assert ns in _namespaces()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ns not in _namespaces(), out
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid), out


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
