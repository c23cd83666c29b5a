"""The journal on PostgreSQL: one key_ID ledger and epoch per peer shared by an HA pair.

Claiming a key_ID is `INSERT ... ON CONFLICT DO NOTHING` under the primary key
(gateway, key_ID): two members can never both claim one, whichever commits
first wins and the other sees the row. Committing an epoch is a conditional
upsert (`DO UPDATE ... WHERE stored < new`), a compare-and-set that PostgreSQL
serialises on the row: of two members proposing the same epoch, one commits
and the other gets StaleEpochError. Both happen in one transaction, committed
(synchronous_commit, and synchronous_standby_names where set) before the key is
used. A database that cannot be reached raises JournalUnavailableError, fast,
and the daemon makes no epoch until it answers again: there is no fall-back to
a local journal, which the other member could not see. The password comes from
a 0600 file and is handed to libpq apart from the conninfo, so no log, error
message or status ever holds it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from gateway.journal import (
    MAX_EPOCH,
    EpochRangeError,
    JournalError,
    JournalUnavailableError,
    KeyReuseError,
    StaleEpochError,
)

# A member that lost the database does not wait on it: libpq's connect timeout
# (whole seconds, at least 2) and a statement timeout bound every call.
RECONNECT_HOLDOFF_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qsgw_key_ids (
    gateway_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    epoch BIGINT,
    member TEXT NOT NULL,
    consumed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (gateway_id, key_id)
);
CREATE TABLE IF NOT EXISTS qsgw_epochs (
    gateway_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (gateway_id, peer_id)
);
"""
# Two members creating the schema at once would race on the catalogue.
_SCHEMA_LOCK = 0x71736777  # "qsgw"


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise JournalError(f"journal.password_file {path}: {exc.strerror}") from None


def _describe(exc: BaseException) -> str:
    # libpq's first line names host, port and cause; never the password (not in the
    # conninfo) and never a key (only key_IDs, which are not secret, reach SQL).
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


class PgJournal:
    """The JournalStore on PostgreSQL, rows scoped to `gateway_id` (both members share it;
    other gateways may share the database under their own IDs)."""

    backend = "postgresql"

    def __init__(self, conninfo: str, gateway_id: str, *, member: str = "",
                 password_file: Path | None = None, connect_timeout_s: float = 2.0,
                 statement_timeout_ms: int = 2000) -> None:
        self.conninfo = conninfo
        self.gateway_id = gateway_id
        self.member = member or gateway_id
        self._password_file = password_file
        self._connect_timeout = max(2, int(connect_timeout_s + 0.999))
        self._statement_timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self.last_error: str | None = None
        self._schema_ready = False
        self._unreplicated: str | None = None
        with contextlib.suppress(JournalUnavailableError):
            self._connection()  # early, so a bad DSN shows at start; an outage is no stop

    # ------------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < RECONNECT_HOLDOFF_S:
            raise JournalUnavailableError(f"journal database unreachable: {self.last_error}")
        try:
            # A database cut off (packets dropped, not refused) must not hold a call for
            # TCP's minutes: unacknowledged data and silent keepalives end it in seconds.
            conn = psycopg.connect(
                self.conninfo, autocommit=True, password=read_password(self._password_file),
                connect_timeout=self._connect_timeout, application_name=f"qsgw {self.member}",
                options=f"-c statement_timeout={self._statement_timeout_ms}",
                tcp_user_timeout=self._statement_timeout_ms + 1000, keepalives=1,
                keepalives_idle=1, keepalives_interval=1, keepalives_count=2)
            if not self._schema_ready:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(_SCHEMA)
                self._schema_ready = True
        except psycopg.OperationalError as exc:
            self._failed(exc)
            raise JournalUnavailableError(
                f"journal database unreachable: {self.last_error}") from None
        except psycopg.Error as exc:
            raise JournalError(f"journal database refused the schema: {_describe(exc)}") from None
        conn.add_notice_handler(self._notice)
        self._conn, self._failed_at, self.last_error = conn, None, None
        return conn

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        # A commit whose wait for the synchronous standby was cancelled (statement
        # timeout) is committed on the primary only, and says so in a WARNING.
        if "synchronous replication" in (diag.message_primary or ""):
            self._unreplicated = diag.message_primary

    def _failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        self.last_error = _describe(exc)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _run(self, fn: Any) -> Any:
        """Run `fn(conn)`; a lost connection or a timeout becomes JournalUnavailableError."""
        with self._lock:
            conn = self._connection()
            # statement_timeout does not cover COMMIT's wait for a synchronous standby
            # (PostgreSQL disarms it first): with the standby gone that wait is endless.
            # The client cancels it; the server then warns (see _notice), fail closed.
            timer = threading.Timer(self._statement_timeout_ms / 1000 + 0.5,
                                    lambda: self._cancel(conn))
            timer.daemon = True
            timer.start()
            try:
                return fn(conn)
            except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
                self._failed(exc)
                raise JournalUnavailableError(
                    f"journal database unreachable: {self.last_error}") from None
            except psycopg.Error as exc:
                raise JournalError(f"journal database error: {_describe(exc)}") from None
            finally:
                timer.cancel()

    @staticmethod
    def _cancel(conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=2.0)

    # ------------------------------------------------------------------ JournalStore

    def commit(self, peer_id: str, epoch: int | None, key_ids: Iterable[str]) -> None:
        ids = list(key_ids)
        if len(set(ids)) != len(ids):
            raise KeyReuseError(f"key_ID listed twice for peer {peer_id}")
        if epoch is not None and not 1 <= epoch <= MAX_EPOCH:
            raise EpochRangeError(f"epoch {epoch} for peer {peer_id} is outside "
                                  f"1..{MAX_EPOCH}, what the journal can store")
        gw, member = self.gateway_id, self.member

        def work(conn: psycopg.Connection[Any]) -> None:
            # The exceptions below roll the transaction back: all or nothing.
            with conn.transaction():
                for key_id in ids:
                    claimed = conn.execute(
                        "INSERT INTO qsgw_key_ids VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING RETURNING key_id",
                        (gw, key_id, peer_id, epoch, member, time.time())).fetchone()
                    if claimed is None:
                        row = conn.execute(
                            "SELECT peer_id, member FROM qsgw_key_ids "
                            "WHERE gateway_id = %s AND key_id = %s", (gw, key_id)).fetchone()
                        by = f"peer {row[0]}, member {row[1]}" if row else "another member"
                        reuse = KeyReuseError(f"QKD key_ID {key_id} was already used ({by})")
                        reuse.member = str(row[1]) if row else None
                        raise reuse
                if epoch is None:
                    return
                moved = conn.execute(
                    "INSERT INTO qsgw_epochs VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (gateway_id, peer_id) DO UPDATE "
                    "SET epoch = EXCLUDED.epoch, member = EXCLUDED.member "
                    "WHERE qsgw_epochs.epoch < EXCLUDED.epoch RETURNING epoch",
                    (gw, peer_id, epoch, member)).fetchone()
                if moved is None:
                    row = conn.execute(
                        "SELECT epoch, member FROM qsgw_epochs "
                        "WHERE gateway_id = %s AND peer_id = %s", (gw, peer_id)).fetchone()
                    last, by = (int(row[0]), str(row[1])) if row else (0, "?")
                    stale = StaleEpochError(f"epoch {epoch} for peer {peer_id} is not above "
                                            f"{last} (committed by member {by})")
                    stale.member = by
                    raise stale

        self._unreplicated = None
        self._run(work)
        if self._unreplicated is not None:
            # Fail closed: recorded (so never reused), but not durable beyond this server,
            # so this epoch is not used; the caller aborts the handshake.
            raise JournalUnavailableError(
                f"journal commit not confirmed by the synchronous standby: "
                f"{self._unreplicated}")

    def consume(self, peer_id: str, key_ids: Iterable[str], epoch: int | None = None) -> None:
        self.commit(peer_id, epoch, key_ids)

    def record_epoch(self, peer_id: str, epoch: int) -> None:
        self.commit(peer_id, epoch, ())

    def is_consumed(self, key_id: str) -> bool:
        row = self._run(lambda c: c.execute(
            "SELECT 1 FROM qsgw_key_ids WHERE gateway_id = %s AND key_id = %s",
            (self.gateway_id, key_id)).fetchone())
        return row is not None

    def last_epoch(self, peer_id: str) -> int:
        row = self._run(lambda c: c.execute(
            "SELECT epoch FROM qsgw_epochs WHERE gateway_id = %s AND peer_id = %s",
            (self.gateway_id, peer_id)).fetchone())
        return 0 if row is None else int(row[0])

    def last_epoch_by(self, peer_id: str) -> tuple[int, str | None]:
        """The last epoch for the peer and the member that committed it."""
        row = self._run(lambda c: c.execute(
            "SELECT epoch, member FROM qsgw_epochs WHERE gateway_id = %s AND peer_id = %s",
            (self.gateway_id, peer_id)).fetchone())
        return (0, None) if row is None else (int(row[0]), str(row[1]))

    def epochs(self) -> dict[str, int]:
        rows = self._run(lambda c: c.execute(
            "SELECT peer_id, epoch FROM qsgw_epochs WHERE gateway_id = %s",
            (self.gateway_id,)).fetchall())
        return {str(p): int(e) for p, e in rows}

    def key_ids(self) -> list[dict[str, object]]:
        rows = self._run(lambda c: c.execute(
            "SELECT key_id, peer_id, epoch, consumed_at, member FROM qsgw_key_ids "
            "WHERE gateway_id = %s ORDER BY consumed_at", (self.gateway_id,)).fetchall())
        return [{"key_id": k, "peer": p, "epoch": e, "consumed_at": t, "member": m}
                for k, p, e, t, m in rows]

    def health(self) -> str | None:
        """None while the database answers; else why not (a round trip, bounded)."""
        try:
            self._run(lambda c: c.execute("SELECT 1").fetchone())
        except JournalError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PgJournal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
