"""The HA member's parts without namespaces: the role follows the address, and the
shared journal turns the other member's claim into a split_brain alarm."""

from __future__ import annotations

import asyncio

import pytest

from gateway.daemon.ha import HaRole, SharedJournal, address_is_local
from gateway.journal import StaleEpochError
from gateway.journal_pg import PgJournal
from gateway.telemetry import Telemetry
from qsgw_lab.pgserver import PgServer


def test_the_address_check_binds_for_real() -> None:
    assert address_is_local("127.0.0.1")
    assert not address_is_local("192.0.2.123")  # TEST-NET-1: on no interface here


async def test_the_role_changes_with_the_address_and_waiters_wake() -> None:
    here = {"vip": False}
    role = HaRole("192.0.2.7", "a1", 0.01, probe=lambda _: here["vip"])
    seen: list[bool] = []

    async def listener(active: bool) -> None:
        seen.append(active)

    role.listen(listener)
    task = asyncio.create_task(role.run())
    try:
        waiter = asyncio.create_task(role.wait_for(True))
        await asyncio.sleep(0.05)
        assert not waiter.done() and role.role == "standby"
        here["vip"] = True
        await asyncio.wait_for(waiter, 2)
        here["vip"] = False
        await asyncio.wait_for(role.wait_for(False), 2)
        assert seen == [True, False] and role.takeovers == 1
    finally:
        task.cancel()


def _alarms(tel: Telemetry) -> set[str]:
    return {a.name.value for a in tel.alarms.active()}


@pytest.fixture
def shared(pg: PgServer) -> tuple[SharedJournal, SharedJournal, Telemetry, Telemetry]:
    t1, t2 = Telemetry("gw-u"), Telemetry("gw-u")
    j1 = SharedJournal(PgJournal(pg.conninfo(), "gw-u", member="a1",
                                 password_file=pg.password_file), "a1", t1, "gw-u")
    j2 = SharedJournal(PgJournal(pg.conninfo(), "gw-u", member="a2",
                                 password_file=pg.password_file), "a2", t2, "gw-u")
    return j1, j2, t1, t2


def test_losing_an_epoch_to_the_other_member_raises_split_brain(
        shared: tuple[SharedJournal, SharedJournal, Telemetry, Telemetry]) -> None:
    j1, j2, t1, t2 = shared
    j1.commit("gw-b", 1, ["u-1"])
    with pytest.raises(StaleEpochError):
        j2.commit("gw-b", 1, ["u-1b"])  # both proposed epoch 1: the database picked a1
    assert "split_brain" in _alarms(t2) and j2.conflicts == 1
    assert "split_brain" not in _alarms(t1)
    # a2 goes on (epoch 2); a1, still holding the role, sees it at its next attempt.
    j2.commit("gw-b", 2, ["u-2"])
    assert j1.last_epoch("gw-b") == 2
    assert "split_brain" in _alarms(t1)
    # After a role change the other member's epochs are expected: no alarm.
    j1.reset()
    j2.commit("gw-b", 3, ["u-3"])
    t1.alarm("split_brain", "gw-u", False)
    assert j1.last_epoch("gw-b") == 3 and "split_brain" not in _alarms(t1)
    j1.close()
    j2.close()
