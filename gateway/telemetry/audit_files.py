"""Audit files on disk: rotated names, the chain order of files, and sealing a full file.

A full file is renamed ``<stem>.<first seq>.<ext>`` (the directory fsynced) and,
with a signer, gets its detached signature; the name, not the content, gives a
file its place in the chain, so a forged record cannot move a file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from gateway.telemetry.audit_sign import AuditSigner, write_signature

log = logging.getLogger("gateway.telemetry.audit")


def rotated_name(active: Path, first_seq: int) -> Path:
    return active.with_name(f"{active.stem}.{first_seq:012d}{active.suffix}")


def rotated_pattern(active: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(active.stem)}\.(\d{{12}}){re.escape(active.suffix)}$")


def is_rotated_file(path: Path) -> bool:
    return re.fullmatch(r".+\.\d{12}(\.[^.]*)?", path.name) is not None


def order_files(paths: Sequence[Path]) -> list[Path]:
    """Chain order: rotated files by the first seq in their name, then the rest
    (the active file) in the order given. Names, not contents, decide, so a
    forged record cannot move a file."""

    def key(item: tuple[int, Path]) -> tuple[int, int]:
        m = re.fullmatch(r".+\.(\d{12})(\.[^.]*)?", item[1].name)
        return (int(m.group(1)) if m else 1 << 62, item[0])

    return [p for _, p in sorted(enumerate(Path(p) for p in paths), key=key)]


def seal_rotated(
    active: Path, signer: AuditSigner | None, first_seq: int, last_seq: int, last_hash: str
) -> Path:
    """Rename the full active file to its rotated name, durably, and sign it."""
    target = rotated_name(active, first_seq)
    os.replace(active, target)
    dir_fd = os.open(active.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if signer is not None:
        try:
            write_signature(target, signer, first_seq, last_seq, last_hash)
        except Exception as exc:  # a signing fault must not stop the trail
            log.error("audit: signing %s failed: %s", target.name, type(exc).__name__)
    return target
