"""Audit checkpoints catch truncation and rewrites; a cut last line is quarantined and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.identity import LocalIdentity
from gateway.telemetry import Telemetry
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.audit_records import canonical, record_hash
from gateway.telemetry.audit_sign import HybridSigner
from gateway.telemetry.checkpoint import checkpoint_path


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Path, Path]:
    ident = tmp_path / "id"
    LocalIdentity.generate().save(ident)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    tel = Telemetry("gw-a", audit=audit,
                    checkpoint_signer=HybridSigner.from_identity(LocalIdentity.load(ident)))
    for i in range(10):
        audit.append({"type": "epoch", "epoch": i})
    tel.audit_checkpoint()
    audit.close()
    return path, ident


def _verify(path: Path, ident: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["audit", "verify", str(path), "--identity", str(ident),
               "--checkpoint", str(checkpoint_path(path))])
    return rc, capsys.readouterr().out


def test_intact_trail_matches_its_checkpoint(trail: tuple[Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _verify(*trail, capsys)
    assert rc == 0, out


def test_deleted_tail_is_named(trail: tuple[Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    path, ident = trail
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))  # the chain of what is left is intact
    rc, out = _verify(path, ident, capsys)
    assert rc == 1 and "truncated" in out and "#9" in out, out
    path.write_bytes(b"")
    rc, out = _verify(path, ident, capsys)
    assert rc == 1, out


def test_rewritten_chain_is_named(trail: tuple[Path, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path, ident = trail
    recs = [json.loads(line) for line in path.read_bytes().splitlines()]
    prev = recs[3]["prev"]
    for rec in recs[3:]:  # edit record 3 and recompute the chain after it
        rec["epoch"] = rec.get("epoch", 0) + 100
        rec["prev"] = prev
        rec.pop("hash")
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
    path.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    rc, out = _verify(path, ident, capsys)
    assert rc == 1 and "rewritten" in out, out


def test_cut_last_line_is_quarantined_and_reported(trail: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, ident = trail
    with path.open("ab") as fh:
        fh.write(b'{"type":"epoch","epoch":99,"se')  # a crash mid-line
    AuditLog(path).close()  # the restart
    cut = list(path.parent.glob("audit.jsonl.cut-*"))
    assert len(cut) == 1 and cut[0].read_bytes() == b'{"type":"epoch","epoch":99,"se'
    _, out = _verify(path, ident, capsys)
    assert "quarantined cut line" in out and str(cut[0]) in out, out
