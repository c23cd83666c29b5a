"""The durable journal of consumed QKD key_IDs and of the last epoch per peer.

SQLite with synchronous=FULL: a commit is on disk before it returns, so the
daemon journals a key_ID *before* using the key, and a crash between the two
can only waste a key, never reuse one. The file is created 0600.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from gateway.fsguard import FileSafetyError, check_secret, open_nofollow, reject_symlink


class JournalError(Exception):
    """The journal cannot be opened or written."""

    # A shared journal names the HA member whose claim or epoch stood in the way.
    member: str | None = None


class KeyReuseError(JournalError):
    """A QKD key_ID was consumed before (message names the key_ID and the peer)."""


class StaleEpochError(JournalError):
    """An epoch not above the last recorded one for that peer."""


class EpochRangeError(JournalError):
    """An epoch outside 1..MAX_EPOCH: the wire carries 64 bits, SQLite stores 63."""


class JournalUnavailableError(JournalError):
    """The journal's database cannot be reached (PostgreSQL down, cut off): no new
    epoch until it answers again; never a fall-back to another journal."""


# SQLite's INTEGER is signed 64-bit; a larger epoch could not be recorded.
MAX_EPOCH = 2**63 - 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_ids (
    key_id TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL,
    epoch INTEGER,
    consumed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    peer_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
"""


class Journal:
    """Consumed key_IDs (never twice, across restarts) and last epochs per peer."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # Created 0600 here, before SQLite opens it (its journal files copy the mode);
            # never through a symlink, and an existing file must be ours and 0600.
            for side in (self.path.with_name(self.path.name + "-wal"),
                         self.path.with_name(self.path.name + "-shm")):
                reject_symlink(side)
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                check_secret(self.path, os.fstat(fd))
            finally:
                os.close(fd)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # WAL + synchronous=FULL: every commit is fsynced before it returns
            # (durable before use), with one fsync instead of DELETE mode's three.
            # The -wal and -shm files take the database file's 0600 mode.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._last: dict[str, int] = {
                str(p): int(e) for p, e in self._db.execute("SELECT peer_id, epoch FROM epochs")}
        except FileSafetyError as exc:
            raise JournalError(f"journal refused: {exc}") from None
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc

    def consume(self, peer_id: str, key_ids: Iterable[str], epoch: int | None = None) -> None:
        """Record ``key_ids`` as used, all or none; KeyReuseError if any was seen."""
        self.commit(peer_id, epoch, key_ids)

    def commit(self, peer_id: str, epoch: int | None, key_ids: Iterable[str]) -> None:
        """Atomically record the epoch (if given) and consume the key_IDs, durably."""
        result = self.commit_many([(peer_id, epoch, list(key_ids))])[0]
        if result is not None:
            raise result

    def commit_many(self, items: Sequence[tuple[str, int | None, Sequence[str]]]
                    ) -> list[JournalError | None]:
        """Several commits in one transaction, one fsync (group commit): each item
        all or none (a savepoint each), its refusal (KeyReuseError, StaleEpochError,
        EpochRangeError) returned in its place; durable when this returns."""
        results: list[JournalError | None] = []
        done: list[tuple[str, int]] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for peer_id, epoch, key_ids in items:
                    self._db.execute("SAVEPOINT one")
                    try:
                        self._apply(peer_id, epoch, list(key_ids))
                    except JournalError as exc:
                        self._db.execute("ROLLBACK TO one")
                        results.append(exc)
                    else:
                        results.append(None)
                        if epoch is not None:
                            done.append((peer_id, epoch))
                    self._db.execute("RELEASE one")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path} write failed: {exc}") from exc
        for peer_id, epoch in done:
            self._last[peer_id] = max(epoch, self._last.get(peer_id, 0))
        return results

    def _apply(self, peer_id: str, epoch: int | None, ids: list[str]) -> None:
        if len(set(ids)) != len(ids):
            raise KeyReuseError(f"key_ID listed twice for peer {peer_id}")
        for key_id in ids:
            row = self._db.execute(
                "SELECT peer_id FROM key_ids WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is not None:
                raise KeyReuseError(f"QKD key_ID {key_id} was already used (peer {row[0]})")
            self._db.execute(
                "INSERT INTO key_ids VALUES (?, ?, ?, ?)",
                (key_id, peer_id, epoch, time.time()),
            )
        if epoch is not None:
            if not 1 <= epoch <= MAX_EPOCH:
                raise EpochRangeError(
                    f"epoch {epoch} for peer {peer_id} is outside 1..{MAX_EPOCH}, "
                    "what the journal can store"
                )
            row = self._db.execute(
                "SELECT epoch FROM epochs WHERE peer_id = ?", (peer_id,)).fetchone()
            last = 0 if row is None else int(row[0])
            if epoch <= last:
                raise StaleEpochError(f"epoch {epoch} for peer {peer_id} is not above {last}")
            self._db.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?)", (peer_id, epoch))

    def is_consumed(self, key_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM key_ids WHERE key_id = ?", (key_id,)).fetchone()
        return row is not None

    def last_epoch(self, peer_id: str) -> int:
        """The last recorded epoch for the peer, 0 when none."""
        return self._last_epoch(peer_id)

    def record_epoch(self, peer_id: str, epoch: int) -> None:
        """Record a new epoch; StaleEpochError unless it is above the last one."""
        self.commit(peer_id, epoch, ())

    def epochs(self) -> dict[str, int]:
        """Every peer's last epoch."""
        return {str(p): int(e) for p, e in self._db.execute("SELECT peer_id, epoch FROM epochs")}

    def key_ids(self) -> list[dict[str, object]]:
        """Every consumed key_ID (IDs are not secret), oldest first."""
        rows = self._db.execute(
            "SELECT key_id, peer_id, epoch, consumed_at FROM key_ids ORDER BY consumed_at")
        return [{"key_id": k, "peer": p, "epoch": e, "consumed_at": t} for k, p, e, t in rows]

    def _last_epoch(self, peer_id: str) -> int:
        # From memory: the event loop asks for every handshake, and must not wait
        # on the database while a group commit holds it in another thread.
        return self._last.get(peer_id, 0)

    def health(self) -> str | None:
        """Why the journal cannot be used now, None while it can (a local file)."""
        return None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
