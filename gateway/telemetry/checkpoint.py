"""Audit checkpoints (signed count + head hash) and the quarantine of a cut last line.

A hash chain proves order, not length: whoever can write the files can drop the
newest records, or rewrite the chain and recompute it. A checkpoint, signed with
the gateway identity and shipped off the box (MQTT retained, syslog/SIEM, a copy
beside the trail), pins how many records there were and what the newest one's
hash was; `qsgw audit verify --checkpoint FILE` then names a trail that is
shorter than, or differs from, what the checkpoint saw. A line cut by a crash is
moved to `<trail>.cut-<time>` and reported by verify, never silently dropped.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.fsguard import open_nofollow, write_private_atomic
from gateway.telemetry.audit_sign import AuditSigner, AuditVerifier


def _statement(gateway: str, records: int, head: str, written: float) -> bytes:
    return json.dumps({"kind": "qsgw-audit-checkpoint", "gateway": gateway, "records": records,
                       "head": head, "time": written}, sort_keys=True,
                      separators=(",", ":")).encode()


def make_checkpoint(gateway: str, records: int, head: str, signer: AuditSigner) -> dict[str, Any]:
    """`records`: how many records the chain has (next seq); `head`: the last one's hash."""
    written = time.time()
    sigs = signer.sign(_statement(gateway, records, head, written))
    return {"kind": "qsgw-audit-checkpoint", "gateway": gateway, "records": records,
            "head": head, "time": written,
            "signatures": {k: base64.b64encode(v).decode() for k, v in sigs.items()}}


def checkpoint_path(trail: Path) -> Path:
    return trail.with_name(trail.name + ".checkpoint")


def write_checkpoint(trail: Path, doc: Mapping[str, Any]) -> None:
    path = checkpoint_path(trail)
    write_private_atomic(path, json.dumps(doc, sort_keys=True).encode() + b"\n")


def check_checkpoint(doc: Mapping[str, Any], records: Iterable[Mapping[str, Any]],
                     verifier: AuditVerifier | None) -> list[str]:
    """Problems of the trail against the checkpoint (empty: consistent)."""
    try:
        count, head = int(doc["records"]), str(doc["head"])
        statement = _statement(str(doc["gateway"]), count, head, float(doc["time"]))
        sigs = {k: base64.b64decode(v) for k, v in dict(doc["signatures"]).items()}
    except (KeyError, TypeError, ValueError):
        return ["checkpoint: unreadable"]
    if verifier is None:
        return ["checkpoint: give --identity to check the checkpoint's signature"]
    if not verifier.verify(statement, sigs):
        return ["checkpoint: signature does not verify with this identity (forged or altered)"]
    if count == 0:
        return []
    last_seq = -1
    for rec in records:
        seq = int(rec.get("seq", -1))
        last_seq = max(last_seq, seq)
        if seq == count - 1:
            if rec.get("hash") != head:
                return [f"record #{seq} differs from the checkpoint of "
                        f"{_when(doc)}: the chain was rewritten up to or past it"]
            return []
    return [f"truncated: the checkpoint of {_when(doc)} covers {count} records "
            f"(through #{count - 1}), the trail ends at #{last_seq}: the newest records or "
            "files were deleted"]


def _when(doc: Mapping[str, Any]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(doc["time"])))


def quarantine(trail: Path, data: bytes) -> Path:
    """Keep a cut last line as evidence beside the trail; returns where."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = trail.with_name(f"{trail.name}.cut-{stamp}")
    n = 0
    while path.exists():
        n += 1
        path = trail.with_name(f"{trail.name}.cut-{stamp}.{n}")
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def quarantined(files: Iterable[Path]) -> list[Path]:
    """Cut lines kept beside the given trail files."""
    found: set[Path] = set()
    for f in files:
        found.update(p for p in f.parent.glob(f"{f.name.split('.')[0]}*.cut-*") if p.is_file())
    return sorted(found)
