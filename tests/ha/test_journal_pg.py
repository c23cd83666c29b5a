"""The PostgreSQL journal with a real server: a key_ID is claimed once across members,
an epoch is compare-and-set, a commit is all or nothing, and a database that does
not answer fails closed and recovers when it returns."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.daemon.commits import ThreadCommitter
from gateway.journal import (
    JournalError,
    JournalUnavailableError,
    KeyReuseError,
    StaleEpochError,
)
from gateway.journal_pg import PgJournal
from qsgw_lab.pgserver import PgServer

_n = iter(range(10**6))


@pytest.fixture
def gw() -> str:
    return f"gw-test{next(_n)}"  # rows of their own in the module's database


def member(pg: PgServer, gw: str, name: str) -> PgJournal:
    return PgJournal(pg.conninfo(), gw, member=name, password_file=pg.password_file)


@pytest.fixture
def pair(pg: PgServer, gw: str) -> Iterator[tuple[PgJournal, PgJournal]]:
    a1, a2 = member(pg, gw, "a1"), member(pg, gw, "a2")
    yield a1, a2
    a1.close()
    a2.close()


def test_a_key_id_claimed_by_one_member_is_refused_to_the_other(
        pair: tuple[PgJournal, PgJournal], pg: PgServer, gw: str) -> None:
    a1, a2 = pair
    a1.commit("gw-b", 1, ["kid-1"])
    with pytest.raises(KeyReuseError, match=r"kid-1.*member a1") as info:
        a2.commit("gw-b", 2, ["kid-1"])
    assert info.value.member == "a1"
    assert a2.is_consumed("kid-1") and a2.last_epoch("gw-b") == 1  # nothing of the refusal
    rows = pg.query(f"SELECT key_id, member FROM qsgw_key_ids WHERE gateway_id = '{gw}'")
    assert rows == [["kid-1", "a1"]]


def test_an_epoch_is_compare_and_set_and_a_refused_commit_leaves_nothing(
        pair: tuple[PgJournal, PgJournal]) -> None:
    a1, a2 = pair
    a1.commit("gw-b", 5, ["k5"])
    with pytest.raises(StaleEpochError, match="not above 5") as info:
        a2.commit("gw-b", 5, ["k5-other"])
    assert info.value.member == "a1"
    assert not a1.is_consumed("k5-other")  # the key_ID of the refused epoch is not claimed
    a2.commit("gw-b", 6, ["k6"])
    assert a1.last_epoch("gw-b") == 6 and a1.epochs() == {"gw-b": 6}
    assert [k["key_id"] for k in a1.key_ids()] == ["k5", "k6"]


def test_racing_members_each_win_distinct_epochs_and_never_share_a_key_id(
        pg: PgServer, gw: str) -> None:
    # Two members (one connection each) propose the same epochs and key_IDs at once.
    members = [member(pg, gw, f"m{i}") for i in range(2)]
    won: dict[str, list[int]] = {"m0": [], "m1": []}
    barrier = threading.Barrier(2)

    def race(j: PgJournal) -> None:
        barrier.wait()
        for epoch in range(1, 151):
            try:
                j.commit("gw-b", epoch, [f"key-{epoch}"])
            except (StaleEpochError, KeyReuseError):
                continue
            won[j.member].append(epoch)

    threads = [threading.Thread(target=race, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    all_won = sorted(won["m0"] + won["m1"])
    assert all_won == sorted(set(all_won)), "an epoch was committed twice"
    ids = [k["key_id"] for k in members[0].key_ids()]
    assert len(ids) == len(set(ids)) == len(all_won)  # one claim per committed epoch
    assert members[0].last_epoch("gw-b") == max(all_won) == 150
    for m in members:
        m.close()


def test_a_stopped_database_fails_closed_and_recovers(pg: PgServer, gw: str) -> None:
    a1 = member(pg, gw, "a1")
    a1.commit("gw-b", 1, ["before"])
    pg.stop()
    try:
        with pytest.raises(JournalUnavailableError):
            a1.commit("gw-b", 2, ["during"])
        with pytest.raises(JournalUnavailableError):
            a1.last_epoch("gw-b")
        assert a1.health() is not None
        # A member started while the database is down starts, and says why it cannot write.
        late = member(pg, gw, "a2")
        assert "unreachable" in (late.health() or "")
    finally:
        pg.start()
    # After the reconnect hold-off, both answer again, from the database's state.
    assert pg_wait(lambda: a1.health() is None and late.health() is None)
    assert late.last_epoch("gw-b") == 1 and not late.is_consumed("during")
    late.commit("gw-b", 2, ["after"])
    assert a1.last_epoch("gw-b") == 2
    a1.close()
    late.close()


def test_a_database_that_hangs_holds_the_commit_and_not_the_event_loop(
        pg: PgServer, gw: str) -> None:
    """The daemon's PostgreSQL commits run in a thread: while the database does not
    answer (its processes stopped, as a hung host would be), the loop goes on."""
    a1 = member(pg, gw, "a1")
    committer = ThreadCommitter(a1)

    async def main() -> tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await committer.commit("gw-b", 1, ["warm"])  # connected before the stall
        pg.freeze(True)
        # Resumed from a thread: a commit that blocked the loop must fail, not hang.
        threading.Timer(1.5, pg.freeze, (False,)).start()
        before = ticks
        await committer.commit("gw-b", 2, ["during-stall"])
        during = ticks - before
        ticker.cancel()
        return during, await committer.last_epoch("gw-b")

    try:
        during, epoch = asyncio.run(main())
    finally:
        pg.freeze(False)
    # ~30 ticks in the 1.5 s stall; a commit in the loop would have let none run.
    assert during >= 10, f"the event loop ran {during} times while the commit waited"
    assert epoch == 2 and a1.is_consumed("during-stall")
    a1.close()


def test_a_wrong_password_is_an_error_that_does_not_show_it(
        pg: PgServer, gw: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.password"
    bad.write_text("wrong-password-zz9\n")
    bad.chmod(0o600)
    j = PgJournal(pg.conninfo(), gw, member="x", password_file=bad)
    with pytest.raises(JournalError) as info:
        j.commit("gw-b", 1, ["k"])
    assert "wrong-password-zz9" not in str(info.value)
    assert "authentication" in str(info.value)


def pg_wait(predicate: Callable[[], bool], tries: int = 100) -> bool:
    for _ in range(tries):
        if predicate():
            return True
        time.sleep(0.1)
    return False
