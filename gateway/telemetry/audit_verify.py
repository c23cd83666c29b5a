"""Audit trail verification: every break of the hash chain (edited, deleted, reordered,
inserted) and of the rotated files' signatures, and reading records in chain order."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.telemetry.audit_files import is_rotated_file, order_files
from gateway.telemetry.audit_records import GENESIS, AuditError, parse_time, record_hash
from gateway.telemetry.audit_sign import AuditVerifier, check_signature


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


def verify_files(
    paths: Sequence[Path], verifier: AuditVerifier | None = None, *, partial: bool = False
) -> VerifyResult:
    """Check the chain across `paths`; with a verifier, also each rotated file's
    detached signature. Every break says where and what."""
    ordered = order_files(paths)
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
    for e in _load_entries(order_files(paths)):
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
