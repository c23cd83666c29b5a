"""Detached hybrid signatures (Ed25519 + ML-DSA-65) over rotated audit files.

Both signatures must verify, as for the handshake: the file stays
authentic while either algorithm holds. The signer is anything with
``sign(message) -> {algorithm: signature}``; the daemon passes
``HybridSigner.from_identity(LocalIdentity.load(dir))``. The construction is
the one of gateway.crypto.builtin (so `PublicIdentity` keys verify it) under
an audit-only context.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

SIG_SUFFIX = ".sig"
# Same construction as gateway.crypto.builtin (the handshake's signatures), with
# its own context so an audit signature can never pass as a handshake message.
CONTEXT = b"qsgw audit file v1"
ALGORITHMS = ("ed25519", "ml-dsa-65")


class AuditSignatureError(Exception):
    """A key file could not be loaded or a signature file is malformed."""


class AuditSigner(Protocol):
    def sign(self, message: bytes) -> Mapping[str, bytes]: ...


class AuditVerifier(Protocol):
    def verify(self, message: bytes, signatures: Mapping[str, bytes]) -> bool: ...


def _ed_context(message: bytes) -> bytes:
    # Ed25519 has no context input: prefix it, length first (as builtin does).
    return len(CONTEXT).to_bytes(1, "big") + CONTEXT + message


def _load_private(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditSignatureError(f"{path}: cannot read key file ({exc.strerror})") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_private_key(data, password=None)
        if len(data) == 32:
            # Raw 32-byte seed; which algorithm is decided by the caller's slot.
            return data
    except (ValueError, TypeError):
        pass
    raise AuditSignatureError(f"{path}: not a PEM private key or a 32-byte raw seed")


def _load_public(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditSignatureError(f"{path}: cannot read key file ({exc.strerror})") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return serialization.load_pem_public_key(data)
        return data
    except (ValueError, TypeError):
        raise AuditSignatureError(f"{path}: not a PEM public key") from None


@dataclass(frozen=True)
class HybridSigner:
    ed25519_key: ed25519.Ed25519PrivateKey = field(repr=False)
    mldsa_key: mldsa.MLDSA65PrivateKey = field(repr=False)

    @classmethod
    def from_files(cls, ed25519_file: Path, mldsa_file: Path) -> HybridSigner:
        ed = _load_private(ed25519_file)
        ml = _load_private(mldsa_file)
        if isinstance(ed, bytes):
            ed = ed25519.Ed25519PrivateKey.from_private_bytes(ed)
        if isinstance(ml, bytes):
            ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(ml)
        if not isinstance(ed, ed25519.Ed25519PrivateKey):
            raise AuditSignatureError(f"{ed25519_file}: not an Ed25519 private key")
        if not isinstance(ml, mldsa.MLDSA65PrivateKey):
            raise AuditSignatureError(f"{mldsa_file}: not an ML-DSA-65 private key")
        return cls(ed, ml)

    @classmethod
    def from_identity(cls, identity: Any) -> HybridSigner:
        """From a `gateway.identity.LocalIdentity` (e.g. ``LocalIdentity.load(dir)``)."""
        ed, ml = identity.ed25519_private, identity.mldsa65_private
        if not isinstance(ed, ed25519.Ed25519PrivateKey) or not isinstance(
            ml, mldsa.MLDSA65PrivateKey
        ):
            raise AuditSignatureError("identity keys are not Ed25519 + ML-DSA-65")
        return cls(ed, ml)

    def sign(self, message: bytes) -> Mapping[str, bytes]:
        return {
            "ed25519": self.ed25519_key.sign(_ed_context(message)),
            "ml-dsa-65": self.mldsa_key.sign(message, CONTEXT),
        }

    def verifier(self) -> HybridVerifier:
        return HybridVerifier(self.ed25519_key.public_key(), self.mldsa_key.public_key())


@dataclass(frozen=True)
class HybridVerifier:
    ed25519_key: ed25519.Ed25519PublicKey
    mldsa_key: mldsa.MLDSA65PublicKey

    @classmethod
    def from_files(cls, ed25519_file: Path, mldsa_file: Path) -> HybridVerifier:
        ed = _load_public(ed25519_file)
        ml = _load_public(mldsa_file)
        try:
            if isinstance(ed, bytes):
                ed = ed25519.Ed25519PublicKey.from_public_bytes(ed)
            if isinstance(ml, bytes):
                ml = mldsa.MLDSA65PublicKey.from_public_bytes(ml)
        except ValueError:
            raise AuditSignatureError("public key file has the wrong length") from None
        if not isinstance(ed, ed25519.Ed25519PublicKey):
            raise AuditSignatureError(f"{ed25519_file}: not an Ed25519 public key")
        if not isinstance(ml, mldsa.MLDSA65PublicKey):
            raise AuditSignatureError(f"{mldsa_file}: not an ML-DSA-65 public key")
        return cls(ed, ml)

    @classmethod
    def from_public_identity(cls, ed25519_raw: bytes, mldsa65_raw: bytes) -> HybridVerifier:
        """From the raw keys of a `gateway.identity.PublicIdentity`."""
        try:
            return cls(
                ed25519.Ed25519PublicKey.from_public_bytes(ed25519_raw),
                mldsa.MLDSA65PublicKey.from_public_bytes(mldsa65_raw),
            )
        except ValueError:
            raise AuditSignatureError("public identity keys have the wrong length") from None

    def verify(self, message: bytes, signatures: Mapping[str, bytes]) -> bool:
        try:
            self.ed25519_key.verify(signatures["ed25519"], _ed_context(message))
            self.mldsa_key.verify(signatures["ml-dsa-65"], message, CONTEXT)
        except (KeyError, InvalidSignature, ValueError):
            return False
        return True


def load_verifier(spec: str) -> HybridVerifier:
    """A public identity for `qsgw audit verify --identity`: a `qsgw-id-v2:` (or old v1) string,
    a file holding one, or a directory with `identity.pub` (as `qsgw keygen` writes)
    or with PEM `ed25519.pub` and `mldsa65.pub`."""
    text: str | None = None
    path = Path(spec)
    if spec.startswith(("qsgw-id-v2:", "qsgw-id-v1:")):
        text = spec
    elif path.is_dir():
        if (path / "identity.pub").exists():
            text = (path / "identity.pub").read_text()
        else:
            return HybridVerifier.from_files(path / "ed25519.pub", path / "mldsa65.pub")
    elif path.is_file():
        text = path.read_text()
    else:
        raise AuditSignatureError(f"{spec}: no such identity file or directory")
    from gateway.identity import IdentityError, PublicIdentity

    try:
        # v1 too: old identity.pub files; a typo there fails the signature check anyway.
        public = PublicIdentity.from_text(text, allow_v1=True)
    except IdentityError as exc:
        raise AuditSignatureError(f"{spec}: {exc}") from None
    return HybridVerifier.from_public_identity(public.ed25519, public.mldsa65)


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def file_statement(path: Path, first_seq: int, last_seq: int, last_hash: str) -> dict[str, Any]:
    """What the signature covers: the file's digest and its place in the chain."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "v": 1,
        "sha256": digest,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "last_hash": last_hash,
    }


def write_signature(
    path: Path, signer: AuditSigner, first_seq: int, last_seq: int, last_hash: str
) -> Path:
    statement = file_statement(path, first_seq, last_seq, last_hash)
    sigs = signer.sign(_canonical(statement))
    doc = {
        "statement": statement,
        "signatures": {k: base64.b64encode(v).decode() for k, v in sigs.items()},
    }
    sig_path = path.with_name(path.name + SIG_SUFFIX)
    tmp = sig_path.with_name(sig_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_canonical(doc) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, sig_path)
    return sig_path


def check_signature(path: Path, verifier: AuditVerifier) -> str | None:
    """None when `path`'s detached signature verifies, else what is wrong."""
    sig_path = path.with_name(path.name + SIG_SUFFIX)
    try:
        doc = json.loads(sig_path.read_bytes())
        statement = doc["statement"]
        sigs = {k: base64.b64decode(v, validate=True) for k, v in doc["signatures"].items()}
        if not isinstance(statement, dict):
            raise TypeError
    except FileNotFoundError:
        return "no signature file"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "signature file is malformed"
    if not verifier.verify(_canonical(statement), sigs):
        return "signature does not verify with the given identity"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if statement.get("sha256") != digest:
        return "file content differs from what was signed"
    return None
