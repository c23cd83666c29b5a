"""Group commit: the sessions' journal commits, batched into one transaction and one fsync.

A hub makes dozens of epochs a second; each must be durable (fsync) before its
key is used. One commit at a time in the event loop stalls every session for
each fsync (tens of milliseconds on a busy disk), and caps the gateway at a few
dozen epochs a second. Here the commits that arrive while one transaction is on
disk wait for the next, which carries them all; the transaction runs in a
thread, so the event loop goes on meanwhile. Each commit still succeeds or is
refused on its own (see Journal.commit_many).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.journal import Journal, JournalError
from gateway.journal_api import JournalStore

_Item = tuple[str, int | None, Sequence[str]]


class GroupCommitter:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._pending: list[tuple[_Item, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.transactions = 0

    async def commit(self, peer_id: str, epoch: int | None, key_ids: Sequence[str]) -> None:
        """Durable when it returns; raises what Journal.commit raises."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((peer_id, epoch, list(key_ids)), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="journal-commits")
        # Shielded: a handshake cancelled meanwhile leaves its commit to complete
        # (a key journalled and then not used is wasted, never reused).
        await asyncio.shield(future)

    async def last_epoch(self, peer_id: str) -> int:
        return self._journal.last_epoch(peer_id)  # a local file: answered at once

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            check = getattr(self._journal, "check", None)
            if check is not None:
                check()  # in the loop: a lost journal raises its alarm here
            try:
                results = await asyncio.to_thread(self._journal.commit_many,
                                                  [item for item, _ in batch])
            except (JournalError, OSError) as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, JournalError)
                                             else JournalError(str(exc)))
                continue
            self.transactions += 1
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if result is None:
                    future.set_result(None)
                else:
                    future.set_exception(result)


class ThreadCommitter:
    """A networked journal's (PostgreSQL's) commits and epoch reads, each in a worker
    thread: a slow or cut-off database holds the session that waits on it, never the
    event loop, so the other sessions, the control port and the HA role check go on
    (the journal's lock serialises the calls). The HA pair's journal has async forms
    of both, which raise its split_brain alarm back in the loop."""

    def __init__(self, journal: JournalStore) -> None:
        self._journal = journal

    async def commit(self, peer_id: str, epoch: int | None, key_ids: Sequence[str]) -> None:
        """Durable when it returns; raises what the journal's commit raises."""
        run = getattr(self._journal, "commit_async", None)
        job = (run(peer_id, epoch, list(key_ids)) if run is not None else
               asyncio.to_thread(self._journal.commit, peer_id, epoch, list(key_ids)))
        # Shielded, as above: a cancelled handshake's commit still completes.
        await asyncio.shield(asyncio.ensure_future(job))

    async def last_epoch(self, peer_id: str) -> int:
        ask = getattr(self._journal, "last_epoch_async", None)
        if ask is not None:
            return int(await ask(peer_id))
        return await asyncio.to_thread(self._journal.last_epoch, peer_id)
