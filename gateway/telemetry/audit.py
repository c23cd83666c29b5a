"""The append-only, hash-chained audit trail (JSON lines, fsync per record).

Each record carries ``seq``, ``time``, ``prev`` (the previous record's hash)
and ``hash`` = SHA-256 of the record's canonical JSON without ``hash``.
Files rotate by size; a rotated file is renamed ``<stem>.<first seq>.<ext>``
and the next file's first record links to its last hash, so the chain spans
files. Records never carry key material: only IDs, names and outcomes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.fsguard import open_nofollow, reject_symlink
from gateway.telemetry.audit_sign import (
    AuditSigner,
    AuditVerifier,
    check_signature,
    write_signature,
)
from gateway.telemetry.checkpoint import quarantine

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_RESERVED = frozenset({"seq", "time", "prev", "hash"})


class AuditError(Exception):
    """The audit trail cannot be written or read (message names the file, never data)."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """RFC 3339 / ISO 8601; a time without zone is taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def rotated_name(active: Path, first_seq: int) -> Path:
    return active.with_name(f"{active.stem}.{first_seq:012d}{active.suffix}")


def _rotated_pattern(active: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(active.stem)}\.(\d{{12}}){re.escape(active.suffix)}$")


def is_rotated_file(path: Path) -> bool:
    return re.fullmatch(r".+\.\d{12}(\.[^.]*)?", path.name) is not None


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
        """Pick up the chain where a previous run left it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reject_symlink(self.path)  # FileSafetyError names the file and the fix
        last: dict[str, Any] | None = None
        first: dict[str, Any] | None = None
        dropped = 0
        kept_at: Path | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                # A torn final write never returned to its caller (no fsync
                # completed); cut it so the file stays one record per line.
                keep = data.rfind(b"\n") + 1
                dropped = len(data) - keep
                kept_at = quarantine(self.path, data[keep:])  # evidence, never dropped
                with open(self.path, "r+b") as fh:
                    fh.truncate(keep)
                    os.fsync(fh.fileno())
                data = data[:keep]
            lines = data.splitlines()
            if lines:
                last = self._parse_line(self.path, lines[-1], len(lines))
                first = self._parse_line(self.path, lines[0], 1)
        else:
            pat = _rotated_pattern(self.path)
            rotated = sorted(p for p in self.path.parent.iterdir() if pat.match(p.name))
            if rotated:
                lines = rotated[-1].read_bytes().splitlines()
                if lines:
                    last = self._parse_line(rotated[-1], lines[-1], len(lines))
        if last is not None:
            self._seq = int(last["seq"]) + 1
            self._prev = str(last["hash"])
        if first is not None:
            self._file_first_seq = int(first["seq"])
        self._open()
        if dropped:
            self._write(
                {
                    "type": "audit_recovered",
                    "detail": f"torn final write of {dropped} bytes moved to {kept_at}",
                }
            )

    @staticmethod
    def _parse_line(path: Path, line: bytes, lineno: int) -> dict[str, Any]:
        try:
            rec = json.loads(line)
            int(rec["seq"])
            str(rec["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"{path}:{lineno}: last audit record is unreadable; run `qsgw audit verify`"
            ) from None
        if not isinstance(rec, dict):
            raise AuditError(f"{path}:{lineno}: last audit record is not an object")
        return rec

    def _open(self) -> None:
        self._fd = open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    # -- writing ---------------------------------------------------------

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record durably and return it (with seq, time, prev, hash)."""
        bad = _RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"audit fields may not set {sorted(bad)}")
        with self._lock:
            return self._write(fields)

    def _write(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        if self._fd is None:
            raise AuditError(f"{self.path}: audit log is closed")
        record: dict[str, Any] = dict(fields)
        record["seq"] = self._seq
        record["time"] = format_time(self._now())
        record["prev"] = self._prev
        record["hash"] = record_hash(record)
        line = canonical(record) + b"\n"
        try:
            os.write(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot write audit record ({exc.strerror})") from None
        if self._file_first_seq is None:
            self._file_first_seq = self._seq
        self._seq += 1
        self._prev = record["hash"]
        self._size += len(line)
        if self._size >= self.max_bytes:
            self._rotate()
        return record

    def _rotate(self) -> None:
        assert self._fd is not None and self._file_first_seq is not None
        os.close(self._fd)
        self._fd = None
        target = rotated_name(self.path, self._file_first_seq)
        os.replace(self.path, target)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._signer is not None:
            try:
                write_signature(
                    target, self._signer, self._file_first_seq, self._seq - 1, self._prev
                )
            except Exception as exc:  # a signing fault must not stop the trail
                log.error("audit: signing %s failed: %s", target.name, type(exc).__name__)
        self._file_first_seq = None
        self._open()

    # -- the writer thread -------------------------------------------------

    def submit(self, fields: Mapping[str, Any]) -> None:
        """Queue a record for the writer thread; never blocks on disk."""
        bad = _RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"audit fields may not set {sorted(bad)}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="qsgw-audit", daemon=True)
            self._thread.start()
        self._queue.put(dict(fields))

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.append(item)
            except (AuditError, OSError) as exc:
                self.write_failures += 1
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


# -- reading and verifying -----------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    file: str
    line: int
    seq: int | None
    kind: str  # edited | deleted | reordered | inserted | unsigned | bad-signature
    detail: str

    def __str__(self) -> str:
        seq = "-" if self.seq is None else str(self.seq)
        return f"{self.file}:{self.line}: seq {seq}: {self.kind}: {self.detail}"


@dataclass
class VerifyResult:
    files: int = 0
    records: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)
    signed_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.breaks


@dataclass
class _Entry:
    file: str
    line: int
    rec: dict[str, Any] | None
    seq: int | None
    valid: bool  # its own hash matches its content


def _load_entries(paths: Sequence[Path]) -> list[_Entry]:
    entries: list[_Entry] = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise AuditError(f"{p}: cannot read ({exc.strerror})") from None
        for i, raw in enumerate(data.splitlines(), start=1):
            rec: dict[str, Any] | None = None
            seq: int | None = None
            valid = False
            try:
                obj = json.loads(raw)
                if isinstance(obj, dict):
                    rec = obj
                    s = obj.get("seq")
                    seq = s if isinstance(s, int) and not isinstance(s, bool) else None
                    valid = (
                        seq is not None
                        and isinstance(obj.get("hash"), str)
                        and isinstance(obj.get("prev"), str)
                        and record_hash(obj) == obj["hash"]
                    )
            except ValueError:
                pass
            entries.append(_Entry(str(p), i, rec, seq, valid))
    return entries


def _hash_of(e: _Entry) -> str | None:
    return None if e.rec is None else str(e.rec.get("hash"))


def _order_files(paths: Sequence[Path]) -> list[Path]:
    """Chain order: rotated files by the first seq in their name, then the rest
    (the active file) in the order given. Names, not contents, decide, so a
    forged record cannot move a file."""

    def key(item: tuple[int, Path]) -> tuple[int, int]:
        m = re.fullmatch(r".+\.(\d{12})(\.[^.]*)?", item[1].name)
        return (int(m.group(1)) if m else 1 << 62, item[0])

    return [p for _, p in sorted(enumerate(Path(p) for p in paths), key=key)]


def verify_files(
    paths: Sequence[Path], verifier: AuditVerifier | None = None, *, partial: bool = False
) -> VerifyResult:
    """Check the chain across `paths`; with a verifier, also each rotated file's
    detached signature. Every break says where and what."""
    ordered = _order_files(paths)
    entries = _load_entries(ordered)
    result = VerifyResult(files=len(ordered), records=len(entries))
    breaks = result.breaks

    # The genuine holder of a seq is the valid record the chain links through;
    # other valid records with the same seq are insertions.
    by_seq: dict[int, list[int]] = {}
    for idx, e in enumerate(entries):
        if e.valid and e.seq is not None:
            by_seq.setdefault(e.seq, []).append(idx)
    inserted: set[int] = set()
    hashes_linked = {str(e.rec.get("prev")) for e in entries if e.rec is not None}
    for idxs in by_seq.values():
        if len(idxs) > 1:
            linked = [i for i in idxs if _hash_of(entries[i]) in hashes_linked]
            keep = linked[0] if linked else idxs[0]
            inserted.update(i for i in idxs if i != keep)
    later_seqs: list[set[int]] = [set() for _ in entries]
    acc: set[int] = set()
    for idx in range(len(entries) - 1, -1, -1):
        later_seqs[idx] = set(acc)
        s = entries[idx].seq
        if s is not None and idx not in inserted:
            acc.add(s)

    # The chain starts at seq 0 from GENESIS unless the caller says older
    # files were archived (partial), then it starts wherever the files do.
    expected: int | None = None if partial else 0
    last_hash: str | None = None if partial else GENESIS
    prev_entry: _Entry | None = None
    reordered_reported: set[int] = set()
    for idx, e in enumerate(entries):
        if idx in inserted:
            breaks.append(
                ChainBreak(
                    e.file,
                    e.line,
                    e.seq,
                    "inserted",
                    "a second record with this seq that the chain does not link through",
                )
            )
            continue
        if not e.valid:
            nxt = entries[idx + 1] if idx + 1 < len(entries) else None
            stored = str(e.rec.get("hash")) if e.rec is not None else None
            links_on = (
                nxt is not None
                and nxt.rec is not None
                and stored is not None
                and nxt.rec.get("prev") == stored
            )
            if e.rec is None:
                what = "line is not a JSON record"
            else:
                what = "record content does not match its hash"
            if links_on or e.seq == expected or expected is None:
                breaks.append(ChainBreak(e.file, e.line, e.seq, "edited", what))
                expected = (
                    (expected + 1)
                    if expected is not None
                    else (e.seq + 1 if e.seq is not None else None)
                )
                last_hash = stored
                prev_entry = e
            else:
                breaks.append(
                    ChainBreak(
                        e.file,
                        e.line,
                        e.seq,
                        "inserted",
                        what + " and the chain does not link through it",
                    )
                )
            continue
        assert e.rec is not None and e.seq is not None
        seq = e.seq
        prev = e.rec["prev"]
        if expected is None:
            # partial: older files were archived; start wherever these do.
            pass
        elif seq == expected:
            if prev != last_hash and prev_entry is None:
                breaks.append(
                    ChainBreak(
                        e.file, e.line, seq, "edited", "first record does not start the chain"
                    )
                )
            elif prev != last_hash and prev_entry is not None:
                breaks.append(
                    ChainBreak(
                        prev_entry.file,
                        prev_entry.line,
                        prev_entry.seq,
                        "edited",
                        f"record was altered: seq {seq}'s prev hash no longer matches it",
                    )
                )
        elif seq > expected:
            missing = range(expected, seq)
            if any(m in later_seqs[idx] for m in missing):
                breaks.append(
                    ChainBreak(
                        e.file,
                        e.line,
                        seq,
                        "reordered",
                        f"expected seq {expected}, which comes later",
                    )
                )
                reordered_reported.update(m for m in missing)
            else:
                span = f"{expected}" if seq - expected == 1 else f"{expected}..{seq - 1}"
                breaks.append(
                    ChainBreak(
                        e.file,
                        e.line,
                        seq,
                        "deleted",
                        f"record(s) seq {span} missing before this one"
                        + (" (older files archived? use --partial)" if prev_entry is None else ""),
                    )
                )
        else:  # seq < expected
            if seq not in reordered_reported:
                breaks.append(
                    ChainBreak(
                        e.file,
                        e.line,
                        seq,
                        "reordered",
                        f"seq {seq} appears after seq {expected - 1}",
                    )
                )
            continue  # the chain continues from the highest seq seen
        expected = seq + 1
        last_hash = e.rec["hash"]
        prev_entry = e

    if verifier is not None:
        for p in ordered:
            if not is_rotated_file(p):
                continue
            problem = check_signature(p, verifier)
            if problem is None:
                result.signed_files += 1
            else:
                kind = "unsigned" if problem == "no signature file" else "bad-signature"
                breaks.append(ChainBreak(str(p), 0, None, kind, problem))
    return result


def iter_records(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """Every readable record in chain order (unparsable lines skipped)."""
    for e in _load_entries(_order_files(paths)):
        if e.rec is not None:
            yield e.rec


def filter_records(
    records: Iterator[dict[str, Any]],
    *,
    peer: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    for rec in records:
        if peer is not None and rec.get("peer") != peer:
            continue
        if since is not None or until is not None:
            try:
                t = parse_time(str(rec.get("time")))
            except ValueError:
                continue
            if since is not None and t < since:
                continue
            if until is not None and t > until:
                continue
        yield rec
