"""What the daemon needs of a journal, whichever backend holds it (SQLite or PostgreSQL).

Both keep the same two promises: a key_ID is claimed at most once (an atomic
insert under a UNIQUE constraint), and a peer's epoch only goes up (a
conditional update that fails when the stored epoch is not below the new one).
`commit` does both in one transaction, durably, before the key is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class JournalStore(Protocol):
    backend: str

    def commit(self, peer_id: str, epoch: int | None, key_ids: Iterable[str]) -> None:
        """Record the epoch (if given) and consume the key_IDs, all or nothing; raises
        KeyReuseError, StaleEpochError, EpochRangeError, JournalUnavailableError."""

    def consume(self, peer_id: str, key_ids: Iterable[str], epoch: int | None = None) -> None:
        ...

    def is_consumed(self, key_id: str) -> bool:
        ...

    def last_epoch(self, peer_id: str) -> int:
        """The last recorded epoch for the peer, 0 when none."""

    def record_epoch(self, peer_id: str, epoch: int) -> None:
        ...

    def epochs(self) -> dict[str, int]:
        ...

    def key_ids(self) -> list[dict[str, object]]:
        ...

    def health(self) -> str | None:
        """Why the journal cannot be used now (unreachable...), None while it can."""

    def close(self) -> None:
        ...
