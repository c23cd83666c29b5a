"""The journal fails closed: missing, replaced or behind its signed record is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.identity import LocalIdentity
from gateway.journal_guard import (
    GuardedJournal,
    JournalLostError,
    JournalRecordError,
    check_at_start,
    record_path,
)


@pytest.fixture(scope="module")
def identity() -> LocalIdentity:
    return LocalIdentity.generate()


def _run_epochs(path: Path, identity: LocalIdentity, n: int) -> None:
    check_at_start(path, identity)
    with GuardedJournal(path, identity) as j:
        for e in range(1, n + 1):
            j.commit("gw-b", e, [f"k{e}"])


def test_a_deleted_journal_stops_the_start(tmp_path: Path, identity: LocalIdentity) -> None:
    path = tmp_path / "journal.db"
    _run_epochs(path, identity, 5)
    path.unlink()
    with pytest.raises(JournalRecordError, match=r"missing.*gw-b 5.*--epoch 6 --create"):
        check_at_start(path, identity, " -c gw.yaml")


def test_a_replaced_or_old_journal_stops_the_start(tmp_path: Path, identity: LocalIdentity) -> None:
    path = tmp_path / "journal.db"
    _run_epochs(path, identity, 2)
    old = path.read_bytes()  # "the backup"
    with GuardedJournal(path, identity) as j:
        j.commit("gw-b", 7, ["k7"])
    for side in ("journal.db-wal", "journal.db-shm"):
        (tmp_path / side).unlink(missing_ok=True)
    path.write_bytes(old)
    with pytest.raises(JournalRecordError, match=r"behind.*gw-b: 2 < 7.*--epoch 8"):
        check_at_start(path, identity)


def test_a_forged_record_stops_the_start(tmp_path: Path, identity: LocalIdentity) -> None:
    path = tmp_path / "journal.db"
    _run_epochs(path, identity, 3)
    doc = json.loads(record_path(path).read_text())
    doc["epochs"] = {}
    record_path(path).write_text(json.dumps(doc))
    with pytest.raises(JournalRecordError, match="does not verify"):
        check_at_start(path, identity)
    with pytest.raises(JournalRecordError, match="does not verify"):
        check_at_start(path, LocalIdentity.generate())


def test_a_journal_deleted_while_running_refuses_new_epochs(tmp_path: Path,
                                                            identity: LocalIdentity) -> None:
    path = tmp_path / "journal.db"
    alarms: list[str] = []
    check_at_start(path, identity)
    with GuardedJournal(path, identity, alarms.append) as j:
        j.commit("gw-b", 1, ["k1"])
        path.unlink()
        with pytest.raises(JournalLostError, match="deleted while running"):
            j.commit("gw-b", 2, ["k2"])
        with pytest.raises(JournalLostError):
            j.commit("gw-b", 3, ["k3"])
    assert len(alarms) == 1  # one alarm, not one per attempt
