"""A gateway's signing identity: Ed25519 + ML-DSA-65, both used on every message.

The public half is one pasteable string,
``qsgw-id-v2:<b64 Ed25519>.<b64 ML-DSA-65>.<check>``, pinned in the peer's config;
``check`` is 8 hex digits of SHA-256 over both keys, so a mistyped or cut paste is
refused. The old ``qsgw-id-v1:`` form had no check: configs refuse it (its typos
cannot be caught) and say how to print the v2 form. Private keys live in 0600
files as raw 32-byte seeds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from gateway.crypto.builtin import ED25519, ML_DSA_65
from gateway.crypto.mldsa_oqs import OqsMlDsa65Signer
from gateway.crypto.providers import ProviderError
from gateway.fsguard import FileSafetyError, read_secret

PREFIX = "qsgw-id-v2:"
V1_PREFIX = "qsgw-id-v1:"
CHECK_HEX = 8  # 32 bits: a random typo passes once in four billion
ED25519_FILE = "ed25519.key"
MLDSA65_FILE = "mldsa65.key"
PUBLIC_FILE = "identity.pub"
# Signatures that verified lately, as digests: an INIT is checked at admission (before
# it may cost the session anything) and again by the responder machine, which must not
# trust its caller. Only a success is remembered, and only for the exact keys, context,
# message and signatures, so the memo can spare a repeat but never pass a forgery.
_VERIFIED_MAX = 4096
_verified: OrderedDict[bytes, None] = OrderedDict()


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

    def _body(self) -> str:
        return (base64.b64encode(self.ed25519).decode("ascii") + "."
                + base64.b64encode(self.mldsa65).decode("ascii"))

    def check(self) -> str:
        """The checksum that ends the v2 text."""
        return hashlib.sha256(b"qsgw-id-v2\0" + self.ed25519 + self.mldsa65).hexdigest()[
            :CHECK_HEX]

    def to_text(self) -> str:
        return f"{PREFIX}{self._body()}.{self.check()}"

    @classmethod
    def from_text(cls, text: str, *, allow_v1: bool = False) -> PublicIdentity:
        """Parse a v2 identity (checksum verified). `allow_v1`: also the old form
        without a check, where a typo shows only as a failed signature (audit verify)."""
        text = text.strip()
        if text.startswith(V1_PREFIX):
            if not allow_v1:
                raise IdentityError(
                    "this is a qsgw-id-v1 identity, which has no checksum, so a typo in it "
                    "cannot be caught; on the peer run `qsgw keygen --out DIR --show` (same "
                    f"keys) and paste the {PREFIX}... line it prints"
                )
            return cls._from_parts(text[len(V1_PREFIX):].split("."), 2)
        if not text.startswith(PREFIX):
            raise IdentityError(f"public identity must start with {PREFIX!r}")
        parts = text[len(PREFIX):].split(".")
        identity = cls._from_parts(parts, 3)
        if parts[2] != identity.check() or parts[0] + "." + parts[1] != identity._body():
            raise IdentityError(
                "checksum mismatch: the identity was mistyped or cut (one changed character "
                "is enough); paste it again from the peer's `qsgw keygen` output or identity.pub"
            )
        return identity

    @classmethod
    def _from_parts(cls, parts: list[str], count: int) -> PublicIdentity:
        if len(parts) != count:
            shape = "<Ed25519>.<ML-DSA-65>" + (".<check>" if count == 3 else "")
            raise IdentityError(
                f"public identity must be {shape}: parts separated by '.'"
                " (mistyped or cut? paste it again from `qsgw keygen`)"
            )
        try:
            ed = base64.b64decode(parts[0], validate=True)
            ml = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise IdentityError(
                "public identity is not valid base64 (mistyped? paste it again from "
                "`qsgw keygen`)"
            ) from exc
        try:
            return cls(ed25519=ed, mldsa65=ml)
        except IdentityError as exc:
            raise IdentityError(f"{exc} (mistyped or cut? paste it again)") from None

    def verify(self, message: bytes, sig_ed25519: bytes, sig_mldsa: bytes,
               context: bytes) -> bool:
        """Both signatures over ``message`` verify (Ed25519 first: the cheaper check
        refuses most forgeries)."""
        digest = hashlib.sha256(b"".join(
            len(part).to_bytes(4, "big") + part
            for part in (self.ed25519, self.mldsa65, context, message, sig_ed25519, sig_mldsa)
        )).digest()
        if digest in _verified:
            return True
        if not (ED25519.verify(self.ed25519, sig_ed25519, message, context)
                and ML_DSA_65.verify(self.mldsa65, sig_mldsa, message, context)):
            return False
        _verified[digest] = None
        if len(_verified) > _VERIFIED_MAX:
            _verified.popitem(last=False)
        return True

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
    # The liboqs signer for the ML-DSA-65 seed, made at the first signature; False:
    # OpenSSL signs (no liboqs).
    _mldsa_fast: OqsMlDsa65Signer | bool | None = field(
        default=None, init=False, repr=False, compare=False)

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
        fast = self._mldsa_fast
        if fast is None:
            fast = self._make_fast_signer()
        return (
            ED25519.sign(self.ed25519_private, message, context),
            fast.sign(message, context) if isinstance(fast, OqsMlDsa65Signer)
            else ML_DSA_65.sign(self.mldsa65_private, message, context),
        )

    def _make_fast_signer(self) -> OqsMlDsa65Signer | bool:
        signer = OqsMlDsa65Signer.from_seed(ML_DSA_65.private_bytes(self.mldsa65_private),
                                            ML_DSA_65.public_bytes(self.mldsa65_private))
        fast: OqsMlDsa65Signer | bool = signer if signer is not None else False
        object.__setattr__(self, "_mldsa_fast", fast)  # frozen: a cache, not state
        return fast

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
        self.save_public(d)

    def save_public(self, directory: str | os.PathLike[str]) -> None:
        """(Re)write identity.pub, in the current text form."""
        _write(Path(directory) / PUBLIC_FILE, (self.public.to_text() + "\n").encode("ascii"),
               0o644, True)


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
