"""The PostgreSQL journal on a replicated pair (synchronous_standby_names): a claim that
returned is on the replica too, so it survives the loss of the primary; with the
replica gone, a commit is not confirmed and the epoch is refused (fail closed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _requires import require

from gateway.journal import JournalUnavailableError, KeyReuseError, StaleEpochError
from gateway.journal_pg import PgJournal
from qsgw_lab.pgserver import PgServer

from .conftest import free_port


@pytest.fixture
def replicated() -> Iterator[tuple[PgServer, PgServer]]:
    require("postgresql")
    with PgServer(port=free_port(), settings={"wal_level": "replica"}) as primary:
        primary.start()
        with PgServer(port=free_port(), replica_of=primary, name="pg_b") as replica:
            replica.start()
            # From now on a commit returns once pg_b has it on disk (docs/operations.md).
            primary.configure("synchronous_standby_names", "FIRST 1 (pg_b)")
            yield primary, replica


def _journal(server: PgServer, *, timeout_ms: int = 2000) -> PgJournal:
    return PgJournal(server.conninfo(), "gw-r", member="a1",
                     password_file=server.password_file, statement_timeout_ms=timeout_ms)


def test_a_claim_survives_the_loss_of_the_primary(
        replicated: tuple[PgServer, PgServer]) -> None:
    primary, replica = replicated
    j = _journal(primary)
    for epoch in range(1, 21):
        j.commit("gw-b", epoch, [f"rk-{epoch}"])  # returned: on the replica's disk too
    primary.kill()  # no shutdown: only what the replica confirmed remains
    j.close()
    replica.promote()
    after = _journal(replica)
    assert after.last_epoch("gw-b") == 20
    with pytest.raises(KeyReuseError):
        after.commit("gw-b", 21, ["rk-20"])
    with pytest.raises(StaleEpochError):
        after.commit("gw-b", 20, ["rk-new"])
    after.commit("gw-b", 21, ["rk-21"])
    after.close()


def test_without_its_synchronous_replica_a_commit_is_refused(
        replicated: tuple[PgServer, PgServer]) -> None:
    primary, replica = replicated
    j = _journal(primary, timeout_ms=500)
    j.commit("gw-b", 1, ["sk-1"])
    replica.stop()
    with pytest.raises(JournalUnavailableError, match="synchronous standby"):
        j.commit("gw-b", 2, ["sk-2"])
    # Recorded on the primary (never reused), but that epoch is not used: fail closed.
    assert j.is_consumed("sk-2")
    j.close()
