"""The hash-chained audit trail: rotation, resume, tamper detection, signatures, CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main as qsgw_main
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.audit_records import canonical, record_hash
from gateway.telemetry.audit_sign import HybridSigner, HybridVerifier
from gateway.telemetry.audit_verify import verify_files


def _fill(log: AuditLog, n: int, peers: tuple[str, ...] = ("paris", "ghent")) -> None:
    for i in range(n):
        log.append(
            {
                "type": "epoch",
                "outcome": "made",
                "peer": peers[i % len(peers)],
                "epoch": i,
                "suite": "mlkem768+x25519+qkd",
                "sources": ["mlkem768", "qkd", "x25519"],
                "qkd_key_ids": [f"0000-{i:04d}"],
            }
        )


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".jsonl")


def test_chain_spans_rotated_files_and_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1024)
    _fill(log, 20)
    log.close()
    files = _files(tmp_path)
    assert len(files) >= 4, "small max_bytes must have rotated several times"
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    # Each file's first record links to the previous file's last hash.
    last_hash = None
    for f in files:
        lines = f.read_bytes().splitlines()
        first, last = json.loads(lines[0]), json.loads(lines[-1])
        if last_hash is not None:
            assert first["prev"] == last_hash
        last_hash = last["hash"]
    result = verify_files(files)
    assert result.ok, result.breaks
    assert result.records == 20
    # The order the files are given in does not matter.
    assert verify_files(list(reversed(files))).ok


def test_the_writer_thread_groups_records_into_few_fsyncs_and_rotates_inside_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a hub's event loop submits in a burst goes to disk in a few writes (one fsync
    each), still one verifiable chain across the files a batch rotated through."""
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=16 * 1024)
    for i in range(600):
        log.submit({"type": "epoch", "outcome": "made", "peer": f"br{i:05d}", "epoch": i})
    log.close()
    files = _files(tmp_path)
    result = verify_files(files)
    assert result.ok, result.breaks
    assert result.records == 600
    assert len(files) >= 4, "the burst must have crossed several rotations"
    assert len(fsyncs) < 600 / 4, f"{len(fsyncs)} fsyncs for 600 records"


def test_resume_continues_chain_and_cuts_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1024)
    _fill(log, 7)
    log.close()
    with open(path, "ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"seq": 7, "ti')
    log = AuditLog(path, max_bytes=1024)
    assert log.next_seq == 8  # seq 7 is the recovery note
    _fill(log, 3)
    log.close()
    recs = [json.loads(line) for f in _files(tmp_path) for line in f.read_bytes().splitlines()]
    assert [r["type"] for r in recs].count("audit_recovered") == 1
    assert verify_files(_files(tmp_path)).ok


def test_submit_from_writer_thread_is_durable_after_flush(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(50):
        log.submit({"type": "epoch", "peer": "p", "epoch": i})
    log.flush()
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(50))
    log.close()


def test_reserved_fields_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="seq"):
        log.append({"seq": 5})
    log.close()


# -- tampering, property-based over positions -----------------------------------

N_RECORDS = 14


_CHAIN: list[tuple[int, bytes]] = []


def _chain(tmp: Path) -> list[tuple[int, bytes]]:
    """A rotated chain flattened as (file index, line); made once (fsync is slow)."""
    if not _CHAIN:
        src = tmp / "chain-src"
        src.mkdir()
        log = AuditLog(src / "audit.jsonl", max_bytes=1024)
        _fill(log, N_RECORDS)
        log.close()
        for fi, f in enumerate(_files(src)):
            _CHAIN.extend((fi, line) for line in f.read_bytes().splitlines())
    for p in tmp.glob("part*.jsonl"):
        p.unlink()
    return list(_CHAIN)


def _write(tmp: Path, flat: list[tuple[int, bytes]]) -> tuple[list[Path], list[tuple[str, int]]]:
    """Write files back; returns them and each flat entry's (file, line)."""
    nfiles = max(fi for fi, _ in flat) + 1
    paths = [tmp / f"part{fi:02d}.jsonl" for fi in range(nfiles)]
    where: list[tuple[str, int]] = []
    counts = [0] * nfiles
    buf: list[list[bytes]] = [[] for _ in range(nfiles)]
    for fi, line in flat:
        counts[fi] += 1
        buf[fi].append(line)
        where.append((str(paths[fi]), counts[fi]))
    for fi, p in enumerate(paths):
        p.write_bytes(b"".join(x + b"\n" for x in buf[fi]))
    return paths, where


def _rehash(rec: dict[str, object]) -> bytes:
    rec["hash"] = record_hash(rec)
    return canonical(rec)


def _assert_found(tmp: Path, flat: list[tuple[int, bytes]], pos: int, kind: str) -> None:
    paths, where = _write(tmp, flat)
    result = verify_files(paths)
    assert not result.ok
    kinds = {b.kind for b in result.breaks}
    assert kinds == {kind}, [str(b) for b in result.breaks]
    assert (where[pos][0], where[pos][1]) in {(b.file, b.line) for b in result.breaks}, (
        where[pos],
        [str(b) for b in result.breaks],
    )


_hyp = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_hyp
@given(pos=st.integers(0, N_RECORDS - 1), rehash=st.booleans())
def test_edit_found(tmp_path: Path, pos: int, rehash: bool) -> None:
    if rehash and pos == N_RECORDS - 1:
        pos -= 1  # a rehashed last record has no successor to betray it
    flat = _chain(tmp_path)
    fi, line = flat[pos]
    rec = json.loads(line)
    rec["peer"] = "mallory"
    flat[pos] = (fi, _rehash(rec) if rehash else canonical(rec))
    _assert_found(tmp_path, flat, pos, "edited")


@_hyp
@given(pos=st.integers(0, N_RECORDS - 2))
def test_delete_found(tmp_path: Path, pos: int) -> None:
    flat = _chain(tmp_path)
    del flat[pos]
    _assert_found(tmp_path, flat, pos, "deleted")
    paths, _ = _write(tmp_path, flat)
    assert any(f"seq {pos} missing" in b.detail for b in verify_files(paths).breaks)


@_hyp
@given(pos=st.integers(0, N_RECORDS - 2), dist=st.integers(1, 3))
def test_reorder_found(tmp_path: Path, pos: int, dist: int) -> None:
    flat = _chain(tmp_path)
    # Move records within one file: swap pos with a later record of its file.
    same = [i for i, (fi, _) in enumerate(flat) if fi == flat[pos][0]]
    assert len(same) >= 2
    if pos == same[-1]:
        pos = same[-2]
    later = [i for i in same if i > pos]
    other = later[min(dist, len(later)) - 1]
    fi = flat[pos][0]
    flat[pos], flat[other] = (fi, flat[other][1]), (fi, flat[pos][1])
    _assert_found(tmp_path, flat, pos, "reordered")


@_hyp
@given(src=st.integers(0, N_RECORDS - 2), pos=st.integers(0, N_RECORDS))
def test_insert_found(tmp_path: Path, src: int, pos: int) -> None:
    flat = _chain(tmp_path)
    forged = json.loads(flat[src][1])
    forged["peer"] = "mallory"
    forged["qkd_key_ids"] = ["forged"]
    fi = flat[min(pos, N_RECORDS - 1)][0]
    flat.insert(pos, (fi, _rehash(forged)))
    _assert_found(tmp_path, flat, pos, "inserted")


def test_junk_line_inserted_mid_file_found(tmp_path: Path) -> None:
    flat = _chain(tmp_path)
    flat.insert(5, (flat[5][0], b"not json at all"))
    _assert_found(tmp_path, flat, 5, "inserted")


# -- signatures -------------------------------------------------------------------


def _identity(tmp: Path) -> tuple[HybridSigner, Path]:
    ed = ed25519.Ed25519PrivateKey.generate()
    ml = mldsa.MLDSA65PrivateKey.generate()
    key_dir = tmp / "identity"
    key_dir.mkdir()
    pem = serialization.Encoding.PEM
    for name, k in (("ed25519", ed), ("mldsa65", ml)):
        fd = os.open(key_dir / f"{name}.key", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                k.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        (key_dir / f"{name}.pub").write_bytes(
            k.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    signer = HybridSigner.from_files(key_dir / "ed25519.key", key_dir / "mldsa65.key")
    return signer, key_dir


def test_rotated_files_signed_and_tampering_fails(tmp_path: Path) -> None:
    signer, key_dir = _identity(tmp_path)
    logdir = tmp_path / "log"
    log = AuditLog(logdir / "audit.jsonl", max_bytes=1024, signer=signer)
    _fill(log, 12)
    log.close()
    files = _files(logdir)
    rotated = files[:-1]
    assert rotated and all((f.parent / (f.name + ".sig")).exists() for f in rotated)
    verifier = HybridVerifier.from_files(key_dir / "ed25519.pub", key_dir / "mldsa65.pub")
    good = verify_files(files, verifier)
    assert good.ok and good.signed_files == len(rotated)

    # Another gateway's identity does not verify these files.
    (tmp_path / "other").mkdir()
    other, _ = _identity(tmp_path / "other")
    bad = verify_files(files, other.verifier())
    assert {b.kind for b in bad.breaks} == {"bad-signature"}

    # Rewrite the whole chain consistently (hashes recomputed): the chain alone
    # cannot see it, the signature on the rotated file does.
    victim = rotated[0]
    lines = victim.read_bytes().splitlines()
    rec = json.loads(lines[-1])
    rec["outcome"] = "failed"
    lines[-1] = _rehash(rec)
    victim.write_bytes(b"".join(x + b"\n" for x in lines))
    nxt = rotated[1] if len(rotated) > 1 else files[-1]
    nlines = nxt.read_bytes().splitlines()
    first = json.loads(nlines[0])
    first["prev"] = rec["hash"]
    prev_hash = first["hash"] = record_hash(first)
    nlines[0] = canonical(first)
    for i in range(1, len(nlines)):
        r = json.loads(nlines[i])
        r["prev"] = prev_hash
        prev_hash = r["hash"] = record_hash(r)
        nlines[i] = canonical(r)
    nxt.write_bytes(b"".join(x + b"\n" for x in nlines))
    tampered = verify_files(files, verifier)
    assert any(b.kind == "bad-signature" and b.file == str(victim) for b in tampered.breaks)

    # A removed .sig is reported too.
    (rotated[0].parent / (rotated[0].name + ".sig")).unlink()
    assert any(b.kind == "unsigned" for b in verify_files(files, verifier).breaks)


# -- the CLI ----------------------------------------------------------------------


def test_cli_verify_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    times = iter(float(1_700_000_000 + 60 * i) for i in range(100))
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, clock=lambda: next(times))
    _fill(log, 10)
    log.close()
    files = [str(f) for f in _files(tmp_path)]
    assert qsgw_main(["audit", "verify", *files]) == 0
    assert "OK: 10 records" in capsys.readouterr().out

    assert qsgw_main(["audit", "show", "--peer", "ghent", "--json", *files]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in shown] == [1, 3, 5, 7, 9]

    # 1_700_000_000 is 2023-11-14T22:13:20Z; records are a minute apart.
    assert (
        qsgw_main(
            [
                "audit",
                "show",
                "--since",
                "2023-11-14T22:15:20Z",
                "--until",
                "2023-11-14T22:17:20Z",
                "--json",
                *files,
            ]
        )
        == 0
    )
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in shown] == [2, 3, 4]

    assert qsgw_main(["audit", "show", "--since", "yesterday", *files]) == 2
    assert "ISO 8601" in capsys.readouterr().err

    target = Path(files[0])
    lines = target.read_bytes().splitlines()
    del lines[1]
    target.write_bytes(b"".join(x + b"\n" for x in lines))
    assert qsgw_main(["audit", "verify", *files]) == 1
    out = capsys.readouterr().out
    assert f"{target}:2: seq 2: deleted: record(s) seq 1 missing" in out
    assert "FAILED" in out


def test_gateway_identity_signs_and_cli_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.crypto.builtin import ED25519, ML_DSA_65
    from gateway.identity import LocalIdentity
    from gateway.telemetry.audit_sign import CONTEXT, _canonical

    identity = LocalIdentity.generate()
    id_dir = tmp_path / "id"
    identity.save(id_dir)  # as `qsgw keygen` does: keys 0600 + identity.pub
    logdir = tmp_path / "log"
    log = AuditLog(
        logdir / "audit.jsonl",
        max_bytes=1024,
        signer=HybridSigner.from_identity(LocalIdentity.load(id_dir)),
    )
    _fill(log, 8)
    log.close()
    files = [str(f) for f in _files(logdir)]
    assert qsgw_main(["audit", "verify", "--identity", str(id_dir), *files]) == 0
    assert "signed files verified" in capsys.readouterr().out

    # The handshake's own verifiers accept the signature (one construction).
    doc = json.loads(Path(files[0] + ".sig").read_bytes())
    msg = _canonical(doc["statement"])
    import base64

    pub = identity.public
    assert ED25519.verify(pub.ed25519, base64.b64decode(doc["signatures"]["ed25519"]), msg, CONTEXT)
    assert ML_DSA_65.verify(
        pub.mldsa65, base64.b64decode(doc["signatures"]["ml-dsa-65"]), msg, CONTEXT
    )

    other = LocalIdentity.generate().public.to_text()
    assert qsgw_main(["audit", "verify", "--identity", other, *files]) == 1
    assert "bad-signature" in capsys.readouterr().out
    assert qsgw_main(["audit", "verify", "--identity", "qsgw-id-v1:bogus", *files]) == 2
    assert "error:" in capsys.readouterr().err
