"""Which journal the daemon writes: the local SQLite file (guarded by its signed record)
or the PostgreSQL database an HA pair shares (journal.backend in the config)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.identity import LocalIdentity
from gateway.journal_api import JournalStore
from gateway.journal_guard import GuardedJournal, check_at_start
from gateway.telemetry import Telemetry

from .ha import SharedJournal

log = logging.getLogger("qsgw.daemon")


def check_journal_at_start(cfg: GatewayConfig, identity: LocalIdentity, config_hint: str) -> None:
    """SQLite: refuse to start on a missing or rolled-back journal file. PostgreSQL keeps
    its own durability (and replicas); a database that does not answer is no reason to
    stay down: the daemon starts, fails closed and raises journal_unavailable."""
    if cfg.journal.backend == "sqlite":
        check_at_start(Path(cfg.gateway.state_dir) / "journal.db", identity, config_hint)


def open_journal(cfg: GatewayConfig, identity: LocalIdentity, telemetry: Telemetry,
                 on_lost: Callable[[str], None], record_every_s: float = 0.0) -> JournalStore:
    j = cfg.journal
    if j.backend == "sqlite":
        return GuardedJournal(Path(cfg.gateway.state_dir) / "journal.db", identity, on_lost,
                              record_every_s=record_every_s)
    from gateway.journal_pg import PgJournal  # psycopg only where it is used

    assert j.conninfo is not None  # the config requires it for postgresql
    member = cfg.ha.member if cfg.ha is not None else cfg.gateway.id
    store = PgJournal(j.conninfo, cfg.gateway.id, member=member,
                      password_file=j.password_file, connect_timeout_s=j.connect_timeout_s,
                      statement_timeout_ms=j.statement_timeout_ms)
    log.info("journal on PostgreSQL (%s), member %s", _safe(j.conninfo), member)
    if cfg.ha is None:
        return store
    return SharedJournal(store, member, telemetry, cfg.gateway.id)


def _safe(conninfo: str) -> str:
    """The conninfo for a log line: host, port and database only."""
    from psycopg import conninfo as ci

    parts = ci.conninfo_to_dict(conninfo)
    return " ".join(f"{k}={parts[k]}" for k in ("host", "port", "dbname", "user") if k in parts)
