"""The journal: a QKD key_ID is used once, across restarts and crashes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.journal import Journal, KeyReuseError, StaleEpochError


def test_key_id_refused_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path) as j:
        j.commit("gw-b", 1, ["k1", "k2"])
        assert j.last_epoch("gw-b") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Journal(path) as j:
        with pytest.raises(KeyReuseError, match="k2"):
            j.consume("gw-c", ["k3", "k2"])
        # All or nothing: k3 was not consumed by the refused call.
        assert not j.is_consumed("k3")
        with pytest.raises(StaleEpochError):
            j.record_epoch("gw-b", 1)
        assert j.last_epoch("gw-b") == 1 and j.last_epoch("gw-x") == 0
        j.record_epoch("gw-b", 2)
        assert j.last_epoch("gw-b") == 2


def test_reuse_refused_after_crash_between_journal_and_use(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    marker = tmp_path / "journalled"
    script = textwrap.dedent(f"""
        import os, time
        from gateway.journal import Journal
        j = Journal({str(path)!r})
        j.commit("gw-b", 7, ["key-123"])
        open({str(marker)!r}, "w").close()
        time.sleep(30)   # "use" never happens: killed here
        print("USED")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        for _ in range(200):  # bounded wait, 20 s
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "child never journalled"
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert b"USED" not in out and proc.returncode == -signal.SIGKILL
    with Journal(path) as j:
        with pytest.raises(KeyReuseError):
            j.consume("gw-b", ["key-123"])
        assert j.last_epoch("gw-b") == 7


def test_duplicate_ids_in_one_call(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j, pytest.raises(KeyReuseError):
        j.consume("gw-b", ["a", "a"])
