"""The journal fails closed with real daemons: deleted while running, deleted before
start, and the operator's `qsgw journal set-epoch` that restores service."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qsgw_lab.sitelab import Site, SiteLab, qsgw_argv

from .conftest import site_lab, two_sites


@pytest.fixture
def jlab() -> Iterator[SiteLab]:
    with site_lab("qsjrn") as sites:
        yield sites

def _peer(sites: SiteLab, site: Site, peer: Site) -> dict[str, Any]:
    return sites.peer_status(site, peer.gateway_id) or {}


def _epoch(sites: SiteLab, site: Site, peer: Site) -> int:
    return int(_peer(sites, site, peer).get("epoch", 0))


def _qsgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qsgw_argv(*args), capture_output=True, text=True, timeout=60)


def _journal(site: Site) -> Path:
    return site.dir / "state" / "journal.db"


def _delete_journal(site: Site) -> None:
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        (site.dir / "state" / name).unlink(missing_ok=True)


def _log_since(site: Site, offset: int) -> str:
    return site.log_path.read_bytes()[offset:].decode(errors="replace")


def test_a_journal_deleted_while_running_stops_epochs_and_raises_the_alarm(
        jlab: SiteLab) -> None:
    a, b = two_sites(jlab, rekey=2.0, lifetime=30.0)  # a (gw-inta) initiates
    assert jlab.wait_for(lambda: _epoch(jlab, b, a) >= 2, 60)
    offset = a.log_path.stat().st_size
    _delete_journal(a)
    assert jlab.wait_for(lambda: (jlab.status(a) or {}).get("journal_lost"), 10)
    e_a, e_b = _epoch(jlab, a, b), _epoch(jlab, b, a)
    time.sleep(8.0)  # four rekey intervals
    assert (_epoch(jlab, a, b), _epoch(jlab, b, a)) == (e_a, e_b), "epochs went on"
    assert not _journal(a).exists(), "the daemon recreated the journal behind our back"
    out = _qsgw("status", "-c", str(a.config_path))
    assert out.returncode == 0, out.stderr
    assert "ALARM journal_lost" in out.stdout and "deleted while running" in out.stdout, out.stdout
    log = _log_since(a, offset)
    assert log.count("new epochs stop") == 1, log[-3000:]  # one alarm, not one per attempt


_FIX = re.compile(r"qsgw journal set-epoch -c (\S+) --peer (\S+) --epoch (\d+)( --create)?")


def test_a_journal_deleted_before_start_is_refused_then_restored_with_set_epoch(
        jlab: SiteLab) -> None:
    a, b = two_sites(jlab, rekey=2.0, lifetime=30.0)
    assert jlab.wait_for(lambda: _epoch(jlab, b, a) >= 4, 90)
    jlab.stop_daemon(a)
    last = json.loads((a.dir / "state" / "journal.record").read_text())["epochs"][b.gateway_id]
    assert last >= 4
    _delete_journal(a)

    # `qsgw run` refuses, and says what to run.
    offset = a.log_path.stat().st_size
    jlab.start_daemon(a)
    assert a.process is not None
    assert a.process.wait(60) != 0
    a.process = None
    refusal = _log_since(a, offset)
    assert "missing" in refusal and f"{b.gateway_id} {last}" in refusal, refusal
    assert not _journal(a).exists(), "a refused start must not create an empty journal"
    fix = _FIX.search(refusal)
    assert fix is not None, refusal
    assert fix.group(2) == b.gateway_id and int(fix.group(3)) == last + 1 and fix.group(4)

    # Follow it as printed.
    done = _qsgw(*fix.group(0).split()[1:])
    assert done.returncode == 0, done.stderr
    assert f"epoch 0 -> {last + 1}" in done.stdout, done.stdout

    b_offset = b.log_path.stat().st_size
    refused0 = dict((jlab.status(b) or {}).get("control_refused", {}))
    keys0 = len(jlab.delivered(a.sae_id))
    jlab.start_daemon(a)
    # The peer accepts the next epoch: no `epoch N not above M` loop.
    assert jlab.wait_for(lambda: _epoch(jlab, b, a) >= last + 2, 60), _log_since(b, b_offset)
    assert jlab.wait_for(lambda: _epoch(jlab, b, a) >= last + 4, 30)
    made = int(_peer(jlab, a, b).get("epochs_made", 0))
    keys = len(jlab.delivered(a.sae_id)) - keys0
    # One QKD key an epoch, and the next epoch's prefetched: no key spent on refusals.
    assert keys <= made + 1, (keys, made)
    assert "not above" not in _log_since(b, b_offset)
    refused = (jlab.status(b) or {}).get("control_refused", {})
    assert refused.get("replay", 0) == refused0.get("replay", 0), (refused0, refused)

    # set-epoch never lowers an epoch; the raise it made is in the audit trail.
    jlab.stop_daemon(a)
    now = json.loads(_qsgw("journal", "-c", str(a.config_path), "export").stdout)
    high = now["epochs"][b.gateway_id]
    assert high >= last + 2
    low = _qsgw("journal", "set-epoch", "-c", str(a.config_path), "--peer", b.gateway_id,
                "--epoch", str(last))
    assert low.returncode == 1 and "refusing" in low.stderr, (low.stdout, low.stderr)
    again = json.loads(_qsgw("journal", "-c", str(a.config_path), "export").stdout)
    assert again["epochs"][b.gateway_id] == high
    trail = a.dir / "state" / "audit.jsonl"
    recs = [json.loads(line) for line in trail.read_text().splitlines()]
    raised = [r for r in recs if r.get("type") == "journal_set_epoch"]
    assert len(raised) == 1, raised  # the raise; the refused lowering wrote nothing
    assert raised[0]["peer"] == b.gateway_id and raised[0]["new_epoch"] == last + 1
    assert raised[0]["old_epoch"] == 0
    verify = _qsgw("audit", "verify", str(trail), "--identity", str(a.dir / "identity"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
