"""Audit trail recovery at start: where the chain left off, and a torn final write cut off and kept.

A write that tore (no newline at the end) never returned to its caller; it is moved
to quarantine as evidence and the file is cut back to whole records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fsguard import reject_symlink
from gateway.telemetry.audit_files import rotated_pattern
from gateway.telemetry.audit_records import GENESIS, AuditError
from gateway.telemetry.checkpoint import quarantine


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where the chain goes on: the next seq, the last hash, the active file's first seq."""

    next_seq: int = 0
    last_hash: str = GENESIS
    file_first_seq: int | None = None
    dropped: int = 0  # bytes of a torn final write cut off
    kept_at: Path | None = None  # where they were kept


def resume(path: Path) -> Resumed:
    """Pick up the chain where a previous run left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    reject_symlink(path)  # FileSafetyError names the file and the fix
    last: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    dropped = 0
    kept_at: Path | None = None
    if path.exists() and path.stat().st_size > 0:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            # A torn final write never returned to its caller (no fsync
            # completed); cut it so the file stays one record per line.
            keep = data.rfind(b"\n") + 1
            dropped = len(data) - keep
            kept_at = quarantine(path, data[keep:])  # evidence, never dropped
            with open(path, "r+b") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())
            data = data[:keep]
        lines = data.splitlines()
        if lines:
            last = parse_line(path, lines[-1], len(lines))
            first = parse_line(path, lines[0], 1)
    else:
        pat = rotated_pattern(path)
        rotated = sorted(p for p in path.parent.iterdir() if pat.match(p.name))
        if rotated:
            lines = rotated[-1].read_bytes().splitlines()
            if lines:
                last = parse_line(rotated[-1], lines[-1], len(lines))
    return Resumed(
        next_seq=int(last["seq"]) + 1 if last is not None else 0,
        last_hash=str(last["hash"]) if last is not None else GENESIS,
        file_first_seq=int(first["seq"]) if first is not None else None,
        dropped=dropped,
        kept_at=kept_at,
    )


def parse_line(path: Path, line: bytes, lineno: int) -> dict[str, Any]:
    """The last (or first) record of a file, or AuditError naming where it is unreadable."""
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
