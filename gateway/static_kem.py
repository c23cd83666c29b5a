"""A gateway's static KEM key pair (Classic McEliece), made by `qsgw keygen --static-kem`.

McEliece suites use one static key pair per gateway instead of a key per epoch
(docs/security.md). The pair lives in the identity directory beside the signing
keys: ``<algorithm>.key`` (liboqs secret key, 0600) and ``<algorithm>.pub`` (raw
public key). The peer pins that public file by its plain SHA-256, which
``sha256sum`` on the file also prints; INIT then carries only a hash of it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gateway.crypto.providers import KemKeyPair
from gateway.crypto.suites import Suite, SuiteError, lookup_suite
from gateway.fsguard import FileSafetyError, read_secret


class StaticKemError(Exception):
    """A static KEM key could not be made, loaded or matched to its pin."""


def file_stem(kem_name: str) -> str:
    """``Classic-McEliece-460896f`` -> ``classic-mceliece-460896f``."""
    return kem_name.lower()


def key_files(identity_dir: str | os.PathLike[str], kem_name: str) -> tuple[Path, Path]:
    """(secret key file, public key file) of this gateway's static ``kem_name`` key."""
    d = Path(identity_dir)
    stem = file_stem(kem_name)
    return d / f"{stem}.key", d / f"{stem}.pub"


def sha256_hex(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()


def static_kem_of(name: str) -> str:
    """The static KEM named by a suite (``mceliece460896f``) or an algorithm
    (``Classic-McEliece-460896f``); raises StaticKemError for anything else."""
    from gateway.crypto.oqs_provider import OQS_KEMS

    allowed = sorted(n for n, info in OQS_KEMS.items() if info.static_only)
    if name in allowed:
        return name
    try:
        suite = lookup_suite(name)
    except SuiteError:
        suite = None
    if suite is not None and len(suite.static_kems) == 1:
        return next(iter(suite.static_kems))
    raise StaticKemError(
        f"{name!r} is not a static KEM; allowed: {', '.join(allowed)} "
        "or a suite that uses one (mceliece460896f, mceliece6688128f)"
    )


def suite_static_kem(suite: Suite) -> str | None:
    """The one static KEM of ``suite``, or None (no suite has more than one)."""
    return next(iter(sorted(suite.static_kems)), None)


def generate(identity_dir: str | os.PathLike[str], kem_name: str,
             force: bool = False) -> tuple[Path, str]:
    """Make and write the pair; returns (public file, its SHA-256 hex)."""
    from gateway.crypto.oqs_provider import OqsKem, OqsUnavailable

    secret_path, public_path = key_files(identity_dir, kem_name)
    if not force:
        existing = [str(p) for p in (secret_path, public_path) if p.exists()]
        if existing:
            raise StaticKemError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    try:
        kem = OqsKem(kem_name)
    except OqsUnavailable as exc:
        raise StaticKemError(f"{kem_name} needs liboqs (make setup): {exc}") from None
    pair = kem.generate()
    secret = bytearray(kem.export_secret(pair))
    try:
        Path(identity_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        _write(secret_path, bytes(secret), 0o600)
    finally:
        secret[:] = bytes(len(secret))
    _write(public_path, pair.public, 0o644)
    return public_path, sha256_hex(pair.public)


def load_pair(identity_dir: str | os.PathLike[str], kem_name: str) -> KemKeyPair:
    """This gateway's static pair, as written by `generate` (secret file 0600, ours)."""
    from gateway.crypto.oqs_provider import OqsKem

    secret_path, public_path = key_files(identity_dir, kem_name)
    try:
        secret = read_secret(secret_path)
        public = public_path.read_bytes()
    except FileSafetyError as exc:
        raise StaticKemError(str(exc)) from None
    except OSError as exc:
        raise StaticKemError(f"cannot read {exc.filename}: {exc.strerror} (make the key with "
                             f"`qsgw keygen --out {identity_dir} --static-kem {kem_name}`)"
                             ) from None
    kem = OqsKem(kem_name)
    if len(public) != kem.public_key_size:
        raise StaticKemError(f"{public_path} is {len(public)} bytes, not a {kem_name} public "
                             f"key ({kem.public_key_size} bytes)")
    return kem.load_static(secret, public)


def load_pinned(public_file: str | os.PathLike[str], sha256: str, kem_name: str) -> bytes:
    """The peer's static public key from ``public_file``, checked against its pin."""
    from gateway.crypto.oqs_provider import OqsKem

    try:
        public = Path(public_file).read_bytes()
    except OSError as exc:
        raise StaticKemError(f"cannot read {public_file}: {exc.strerror}") from None
    size = OqsKem(kem_name).public_key_size
    if len(public) != size:
        raise StaticKemError(f"{public_file} is {len(public)} bytes, not a {kem_name} public "
                             f"key ({size} bytes): copy the peer's .pub file again")
    actual = sha256_hex(public)
    if actual != sha256.lower():
        raise StaticKemError(f"{public_file} has SHA-256 {actual}, not the pinned {sha256}: "
                             "the wrong file, or the peer made a new key (ask its operator)")
    return public


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, then renamed: a secret is never briefly readable.
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StaticKemError(f"cannot write {path}: {exc.strerror}") from None
