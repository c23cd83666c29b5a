"""A gateway's signing identity: Ed25519 + ML-DSA-65, both used on every message.

The public half is one pasteable string, ``qsgw-id-v1:<b64 Ed25519>.<b64 ML-DSA-65>``,
pinned in the peer's config. Private keys live in 0600 files as raw 32-byte seeds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.crypto.builtin import ED25519, ML_DSA_65
from gateway.crypto.providers import ProviderError
from gateway.fsguard import FileSafetyError, read_secret

PREFIX = "qsgw-id-v1:"
ED25519_FILE = "ed25519.key"
MLDSA65_FILE = "mldsa65.key"
PUBLIC_FILE = "identity.pub"


class IdentityError(Exception):
    """An identity could not be parsed, loaded or written."""


@dataclass(frozen=True)
class PublicIdentity:
    """The pinned public keys of a gateway."""

    ed25519: bytes
    mldsa65: bytes

    def __post_init__(self) -> None:
        if len(self.ed25519) != ED25519.public_key_size:
            raise IdentityError(f"Ed25519 public key must be {ED25519.public_key_size} bytes")
        if len(self.mldsa65) != ML_DSA_65.public_key_size:
            raise IdentityError(f"ML-DSA-65 public key must be {ML_DSA_65.public_key_size} bytes")

    def to_text(self) -> str:
        return (
            PREFIX
            + base64.b64encode(self.ed25519).decode("ascii")
            + "."
            + base64.b64encode(self.mldsa65).decode("ascii")
        )

    @classmethod
    def from_text(cls, text: str) -> PublicIdentity:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise IdentityError(f"public identity must start with {PREFIX!r}")
        parts = text[len(PREFIX) :].split(".")
        if len(parts) != 2:
            raise IdentityError(
                "public identity must be two base64 keys separated by '.' (Ed25519.ML-DSA-65)"
            )
        try:
            ed = base64.b64decode(parts[0], validate=True)
            ml = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise IdentityError("public identity is not valid base64") from exc
        return cls(ed25519=ed, mldsa65=ml)

    def fingerprint(self) -> str:
        """A short, stable fingerprint for logs and for comparing by eye."""
        digest = hashlib.sha256(self.ed25519 + self.mldsa65).hexdigest()[:32]
        return ":".join(digest[i : i + 4] for i in range(0, 32, 4))

    def __repr__(self) -> str:
        return f"PublicIdentity(fingerprint={self.fingerprint()!r})"


@dataclass(frozen=True)
class LocalIdentity:
    """This gateway's private signing keys (opaque key objects)."""

    ed25519_private: object = field(repr=False)
    mldsa65_private: object = field(repr=False)

    @classmethod
    def generate(cls) -> LocalIdentity:
        return cls(ED25519.generate(), ML_DSA_65.generate())

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(
            ed25519=ED25519.public_bytes(self.ed25519_private),
            mldsa65=ML_DSA_65.public_bytes(self.mldsa65_private),
        )

    def sign(self, message: bytes, context: bytes) -> tuple[bytes, bytes]:
        """(Ed25519 signature, ML-DSA-65 signature) over ``message``."""
        return (
            ED25519.sign(self.ed25519_private, message, context),
            ML_DSA_65.sign(self.mldsa65_private, message, context),
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LocalIdentity:
        """Load the keys written by `qsgw keygen`; refuses files readable by others."""
        d = Path(directory)
        try:
            ed = ED25519.load_private(_read_secret(d / ED25519_FILE))
            ml = ML_DSA_65.load_private(_read_secret(d / MLDSA65_FILE))
        except ProviderError as exc:
            raise IdentityError(f"identity in {d} is malformed: {exc}") from exc
        return cls(ed, ml)

    def save(self, directory: str | os.PathLike[str], force: bool = False) -> None:
        """Write both private keys (created 0600) and the public identity."""
        d = Path(directory)
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(f"cannot create {d}: {exc.strerror}") from exc
        targets = [d / ED25519_FILE, d / MLDSA65_FILE]
        if not force:
            existing = [str(p) for p in targets if p.exists()]
            if existing:
                raise IdentityError(
                    f"refusing to overwrite {', '.join(existing)} (use --force)"
                )
        _write(d / ED25519_FILE, ED25519.private_bytes(self.ed25519_private), 0o600, force)
        _write(d / MLDSA65_FILE, ML_DSA_65.private_bytes(self.mldsa65_private), 0o600, force)
        _write(d / PUBLIC_FILE, (self.public.to_text() + "\n").encode("ascii"), 0o644, True)


def _read_secret(path: Path) -> bytes:
    # No symlink followed; mode 0600 or stricter and owned by us, checked on the open file.
    try:
        return read_secret(path)
    except FileSafetyError as exc:
        raise IdentityError(str(exc)) from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    # Created with its final mode: a secret is never briefly world-readable.
    tmp = path.with_name(path.name + ".tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
            tmp.unlink()
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"refusing to overwrite {path} (use --force)") from exc
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise IdentityError(f"cannot write {path}: {exc.strerror}") from exc
