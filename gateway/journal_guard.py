"""The journal fails closed: a signed record in the state dir says that it existed.

`journal.record` holds each peer's last epoch, signed with the gateway identity
and rewritten after every epoch. At start, a journal that is missing or behind
its record (deleted, replaced by an empty file, restored from an old backup)
stops `qsgw run` with what to do; a record that does not verify stops it too.
While running, `GuardedJournal` notices the file being deleted or replaced
(its inode changes) and refuses every new epoch, raising the journal_lost alarm,
instead of writing on into a file nobody will ever read again.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from gateway.crypto.builtin import ED25519, ML_DSA_65
from gateway.fsguard import open_nofollow, write_private_atomic
from gateway.identity import LocalIdentity, PublicIdentity
from gateway.journal import Journal, JournalError

RECORD_NAME = "journal.record"
_CONTEXT = b"qsgw/1 journal record"


class JournalLostError(JournalError):
    """The journal was deleted or replaced while the daemon ran: no new epoch."""


class JournalRecordError(JournalError):
    """The journal does not match the state dir's record: `qsgw run` refuses to start."""


def record_path(journal_path: Path) -> Path:
    return journal_path.with_name(RECORD_NAME)


def _message(epochs: Mapping[str, int], written: float) -> bytes:
    return json.dumps({"epochs": dict(epochs), "time": written}, sort_keys=True,
                      separators=(",", ":")).encode()


def write_record(journal_path: Path, epochs: Mapping[str, int], identity: LocalIdentity) -> None:
    """Sign and write the record atomically (temp file, fsync, rename)."""
    written = time.time()
    ed, ml = identity.sign(_message(epochs, written), _CONTEXT)
    doc = {"epochs": dict(epochs), "time": written,
           "sig_ed25519": base64.b64encode(ed).decode(),
           "sig_mldsa65": base64.b64encode(ml).decode()}
    path = record_path(journal_path)
    write_private_atomic(path, json.dumps(doc, sort_keys=True).encode() + b"\n")


def read_record(journal_path: Path, public: PublicIdentity) -> dict[str, int] | None:
    """The recorded epochs, None when there is no record; JournalRecordError when it
    does not verify."""
    path = record_path(journal_path)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw)
        epochs = {str(k): int(v) for k, v in doc["epochs"].items()}
        message = _message(epochs, float(doc["time"]))
        ed = base64.b64decode(doc["sig_ed25519"])
        ml = base64.b64decode(doc["sig_mldsa65"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise JournalRecordError(f"{path} is unreadable; restore the state dir from backup "
                                 "(journal.db and journal.record together)") from None
    if not (ED25519.verify(public.ed25519, ed, message, _CONTEXT)
            and ML_DSA_65.verify(public.mldsa65, ml, message, _CONTEXT)):
        raise JournalRecordError(f"{path} does not verify with this gateway's identity: it was "
                                 "altered or belongs to another gateway; restore the state dir "
                                 "from backup")
    return epochs


def _fix(epochs: Mapping[str, int], config_hint: str) -> str:
    return "; ".join(f"qsgw journal set-epoch{config_hint} --peer {p} --epoch {e + 1}"
                     for p, e in sorted(epochs.items()))


def check_at_start(journal_path: Path, identity: LocalIdentity, config_hint: str = "") -> None:
    """Refuse to start when the record says more than the journal holds."""
    recorded = read_record(journal_path, identity.public)
    if recorded is None:
        if journal_path.exists():  # a journal from before records existed: record it now
            with Journal(journal_path) as j:
                write_record(journal_path, j.epochs(), identity)
        return
    if not journal_path.exists():
        raise JournalRecordError(
            f"journal {journal_path} is missing, but {record_path(journal_path)} records that "
            f"it existed (last epochs: {_epochs_text(recorded)}). Restore journal.db from "
            f"backup; if it is lost for good, start a new one above those epochs: "
            f"{_fix(recorded, config_hint)} --create")
    with Journal(journal_path) as j:
        have = j.epochs()
    behind = {p: e for p, e in recorded.items() if have.get(p, 0) < e}
    if behind:
        raise JournalRecordError(
            f"journal {journal_path} is behind {record_path(journal_path)} "
            f"({', '.join(f'{p}: {have.get(p, 0)} < {e}' for p, e in sorted(behind.items()))}): "
            f"it was replaced or restored from an older backup, and the peers would refuse its "
            f"epochs. Raise them: {_fix(behind, config_hint)}")


def _epochs_text(epochs: Mapping[str, int]) -> str:
    return ", ".join(f"{p} {e}" for p, e in sorted(epochs.items())) or "none"


class GuardedJournal(Journal):
    """A Journal that notices its file being deleted or replaced, and keeps the
    state dir's record up to date after each epoch."""

    def __init__(self, path: str | os.PathLike[str], identity: LocalIdentity,
                 on_lost: Callable[[str], None] | None = None,
                 record_every_s: float = 0.0) -> None:
        super().__init__(path)
        self._identity = identity
        self._on_lost = on_lost
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self.lost: str | None = None
        self._lost_reported = False
        self._epochs_lock = threading.Lock()
        # Every peer's last epoch, kept here: the record lists them all, and reading
        # them back from SQLite after each epoch cost O(peers) per commit.
        self._epochs = self.epochs()
        # 0: the record is rewritten after every epoch. Above 0 (the daemon): at most
        # that often, by flush_record(), so a hub's 80 epochs a second cost one signed
        # write a second, not 80 rewrites of a 10,000-peer record. The record is only
        # ever behind the journal (written after the commits it lists), never ahead.
        self._record_every_s = record_every_s
        self._record_dirty = False
        self._record_at = 0.0

    def check(self) -> str | None:
        """Why the journal is lost (deleted/replaced), or None while it is fine."""
        if self.lost is None:
            self.lost = self._inode_changed()
        if self.lost is not None and not self._lost_reported:
            self._lost_reported = True
            if self._on_lost is not None:
                self._on_lost(self.lost)
        return self.lost

    def _inode_changed(self) -> str | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return f"journal {self.path} was deleted while running"
        if (st.st_dev, st.st_ino) != self._inode:
            return f"journal {self.path} was replaced while running"
        return None

    def commit(self, peer_id: str, epoch: int | None, key_ids: Iterable[str]) -> None:
        self.check()  # in the caller's thread: a lost journal raises its alarm at once
        super().commit(peer_id, epoch, key_ids)

    def commit_many(self, items: Sequence[tuple[str, int | None, Sequence[str]]]
                    ) -> list[JournalError | None]:
        # May run in the group committer's thread: the loss is noted here, and
        # reported (the alarm) by the next check() in the event loop.
        if self.lost is None:
            self.lost = self._inode_changed()
        if self.lost is not None:
            raise JournalLostError(f"{self.lost}: no new epoch until it is restored and the "
                                   "daemon restarted")
        results = super().commit_many(items)
        with self._epochs_lock:
            for (peer_id, epoch, _), result in zip(items, results, strict=True):
                if result is None and epoch is not None:
                    self._epochs[peer_id] = max(epoch, self._epochs.get(peer_id, 0))
                    self._record_dirty = True
        if self._record_every_s <= 0:
            self.flush_record()
        return results

    def flush_record(self, force: bool = False) -> None:
        """Rewrite the record if an epoch was made since, at most every record_every_s."""
        if not self._record_dirty or self.lost is not None:
            return
        now = time.monotonic()
        if not force and now - self._record_at < self._record_every_s:
            return
        with self._epochs_lock:
            epochs, self._record_dirty = dict(self._epochs), False
        write_record(self.path, epochs, self._identity)
        self._record_at = now

    def close(self) -> None:
        try:
            self.flush_record(force=True)
        finally:
            super().close()
