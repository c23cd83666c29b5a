"""The audit trail's writer: hash-chained JSON lines, fsync per write, rotation by size.

A rotated file's successor links to its last hash, so the chain spans files
(audit_files names and seals them; audit_recovery resumes after a crash;
audit_verify checks the chain; audit_records is the record format).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.fsguard import open_nofollow
from gateway.telemetry.audit_files import seal_rotated
from gateway.telemetry.audit_records import (
    GENESIS,
    RESERVED,
    AuditError,
    canonical,
    format_time,
    record_hash,
)
from gateway.telemetry.audit_recovery import resume
from gateway.telemetry.audit_sign import AuditSigner

log = logging.getLogger(__name__)
# Records the writer thread puts in one write and fsync at most.
WORKER_BATCH = 256


class AuditLog:
    """Writer of the chain. `append` is durable on return; `submit` hands the
    record to a writer thread so an event loop never waits on fsync."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        signer: AuditSigner | None = None,
        clock: Any = None,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.write_failures = 0
        self._seq = 0  # next seq to write
        self._prev = GENESIS
        self._file_first_seq: int | None = None
        self._fd: int | None = None
        self._size = 0
        self._resume()

    # -- state ---------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._prev

    def _now(self) -> float:
        import time

        return float(self._clock()) if self._clock is not None else time.time()

    def _resume(self) -> None:
        """Pick up the chain where a previous run left it (audit_recovery)."""
        state = resume(self.path)
        self._seq = state.next_seq
        self._prev = state.last_hash
        self._file_first_seq = state.file_first_seq
        self._open()
        if state.dropped:
            self._write(
                {
                    "type": "audit_recovered",
                    "detail": f"torn final write of {state.dropped} bytes moved to {state.kept_at}",
                }
            )

    def _open(self) -> None:
        self._fd = open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    # -- writing ---------------------------------------------------------

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record durably and return it (with seq, time, prev, hash)."""
        bad = RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"audit fields may not set {sorted(bad)}")
        with self._lock:
            return self._write(fields)

    def _write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return self._write_many([fields])[0]

    def _write_many(self, batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Chain and write records with one write and one fsync (up to a rotation)."""
        if self._fd is None:
            raise AuditError(f"{self.path}: audit log is closed")
        records: list[dict[str, Any]] = []
        lines: list[bytes] = []
        seq, prev, size = self._seq, self._prev, self._size
        for fields in batch:
            record: dict[str, Any] = dict(fields)
            record["seq"] = seq
            record["time"] = format_time(self._now())
            record["prev"] = prev
            record["hash"] = record_hash(record)
            line = canonical(record) + b"\n"
            records.append(record)
            lines.append(line)
            seq, prev, size = seq + 1, record["hash"], size + len(line)
            if size >= self.max_bytes:
                break  # the rest go into the next file
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot write audit record ({exc.strerror})") from None
        if self._file_first_seq is None:
            self._file_first_seq = self._seq
        self._seq, self._prev, self._size = seq, prev, size
        if self._size >= self.max_bytes:
            self._rotate()
        if len(records) < len(batch):
            records += self._write_many(batch[len(records):])
        return records

    def _rotate(self) -> None:
        assert self._fd is not None and self._file_first_seq is not None
        os.close(self._fd)
        self._fd = None
        seal_rotated(self.path, self._signer, self._file_first_seq, self._seq - 1, self._prev)
        self._file_first_seq = None
        self._open()

    # -- the writer thread -------------------------------------------------

    def submit(self, fields: Mapping[str, Any]) -> None:
        """Queue a record for the writer thread; never blocks on disk."""
        bad = RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"audit fields may not set {sorted(bad)}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="qsgw-audit", daemon=True)
            self._thread.start()
        self._queue.put(dict(fields))

    def _worker(self) -> None:
        # Group commit: what queued up while the last fsync ran goes in the next one.
        stop = False
        while not stop:
            batch: list[dict[str, Any]] = []
            item = self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= WORKER_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            if not batch:
                continue
            try:
                with self._lock:
                    self._write_many(batch)
            except (AuditError, OSError) as exc:
                self.write_failures += len(batch)
                log.error("audit: %s", exc)

    def flush(self) -> None:
        """Wait until every submitted record is on disk (stops the thread)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
