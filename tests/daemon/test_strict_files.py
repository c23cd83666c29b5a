"""Strict files: unsafe directories, modes, owners and symlinks are refused with the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.daemon.status import StatusServer
from gateway.fsguard import FileSafetyError
from gateway.identity import IdentityError, LocalIdentity
from gateway.journal import Journal, JournalError
from gateway.telemetry.audit import AuditLog


@pytest.fixture
def identity_dir(tmp_path: Path) -> Path:
    d = tmp_path / "identity"
    LocalIdentity.generate().save(d)
    return d


def test_group_or_world_writable_dirs_are_refused(tmp_path: Path, identity_dir: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    GatewaySettings(id="gw-a", identity_dir=identity_dir, state_dir=state)  # fine as made
    state.chmod(0o777)
    with pytest.raises(ValidationError, match=r"state_dir .* mode 0777.*chmod go-w"):
        GatewaySettings(id="gw-a", identity_dir=identity_dir, state_dir=state)
    state.chmod(0o700)
    identity_dir.chmod(0o777)
    with pytest.raises(ValidationError, match=r"identity_dir .* mode 0777"):
        GatewaySettings(id="gw-a", identity_dir=identity_dir, state_dir=state)


def test_secret_owned_by_another_user_is_refused(identity_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user (CI runs as root)")
    key = identity_dir / "ed25519.key"
    if not key.exists():
        key = next(p for p in identity_dir.iterdir() if p.suffix == ".key")
    os.chown(key, 65534, 65534)
    with pytest.raises(IdentityError, match=r"owned by uid 65534.*chown"):
        LocalIdentity.load(identity_dir)


def test_secret_through_a_symlink_is_refused(identity_dir: Path, tmp_path: Path) -> None:
    key = next(p for p in identity_dir.iterdir() if p.suffix == ".key")
    real = tmp_path / "elsewhere.key"
    key.rename(real)
    key.symlink_to(real)
    with pytest.raises(IdentityError, match="symlink"):
        LocalIdentity.load(identity_dir)


def test_journal_with_a_loose_mode_or_a_symlink_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "journal.db"
    Journal(loose).close()
    loose.chmod(0o666)
    with pytest.raises(JournalError, match=r"mode 0666.*chmod 600"):
        Journal(loose)
    target = tmp_path / "victim"
    link = tmp_path / "linked.db"
    link.symlink_to(target)
    with pytest.raises(JournalError, match="symlink"):
        Journal(link)
    assert not target.exists()  # the symlink's target was not created


def test_audit_trail_through_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(FileSafetyError, match="symlink"):
        AuditLog(link)
    assert not target.exists()


async def _no_document() -> bytes:
    return b"{}"


async def test_status_socket_path_that_is_no_socket_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "important"
    victim.write_text("keep me")
    sock = tmp_path / "status.sock"
    sock.symlink_to(victim)
    with pytest.raises(FileSafetyError, match="not a socket"):
        await StatusServer(sock, _no_document).start()
    assert victim.read_text() == "keep me" and sock.is_symlink()
