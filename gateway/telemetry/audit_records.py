"""The audit record format: canonical JSON, the record hash, record times, the chain's start.

Each record carries ``seq``, ``time``, ``prev`` (the previous record's hash)
and ``hash`` = SHA-256 of the record's canonical JSON without ``hash``.
Records never carry key material: only IDs, names and outcomes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "time", "prev", "hash"})


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
