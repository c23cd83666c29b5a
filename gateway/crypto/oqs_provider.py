"""The optional liboqs provider (liboqs-python, extra ``qsgw[oqs]``).

``import oqs`` without a findable liboqs shared library sleeps, tries to
``git clone`` and build liboqs, then raises SystemExit. So the library is
looked for first ($OQS_INSTALL_PATH/lib, then the copy `make setup` builds
into the venv, ``<sys.prefix>/opt/liboqs``) and ``oqs`` is imported only when
it is there, with OQS_INSTALL_PATH pointing at that prefix so liboqs-python
loads exactly it; every failure becomes ``OqsUnavailable`` with a reason an
operator can act on.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.crypto.providers import KemKeyPair, ProviderError

PROVIDER_NAME = "liboqs"
PINNED_VERSION = "0.16.0"
INSTALL_HINT = "run `make setup` (it builds the pinned liboqs into the venv and installs qsgw[oqs])"
MISSING_LIBRARY_REASON = (
    "liboqs shared library not found ($OQS_INSTALL_PATH/lib, <venv>/opt/liboqs/lib); "
    + INSTALL_HINT
)


class OqsUnavailable(Exception):
    """liboqs or liboqs-python is not usable here; the message says why."""


@dataclass(frozen=True)
class _OqsKemInfo:
    name: str  # our name (also the liboqs name)
    static_only: bool


# The liboqs KEMs the suites may name. Classic McEliece keys (~0.5-1 MB public)
# are made at provisioning and pinned, never per epoch.
OQS_KEMS: dict[str, _OqsKemInfo] = {
    n: _OqsKemInfo(n, s)
    for n, s in (
        ("FrodoKEM-976-AES", False),
        ("FrodoKEM-976-SHAKE", False),
        ("FrodoKEM-1344-AES", False),
        ("FrodoKEM-1344-SHAKE", False),
        ("Classic-McEliece-460896f", True),
        ("Classic-McEliece-6688128f", True),
        # liboqs 0.16 implements HQC as of its 2025-08-22 specification as HQC-1/3/5.
        ("HQC-3", False),
        ("ML-KEM-768", False),
        ("ML-KEM-1024", False),
    )
}


def install_prefixes() -> list[str]:
    """Where liboqs is looked for, in order: $OQS_INSTALL_PATH, the venv's copy."""
    roots = [os.environ.get("OQS_INSTALL_PATH", ""), os.path.join(sys.prefix, "opt", "liboqs")]
    return [r for r in dict.fromkeys(roots) if r]


def find_liboqs_prefix() -> str | None:
    """The install prefix holding a liboqs shared library, or None; imports nothing."""
    for root in install_prefixes():
        for pattern in ("liboqs.so*", "liboqs.dylib", "oqs.dll"):
            if glob.glob(os.path.join(root, "lib", pattern)):
                return root
    return None


def find_liboqs() -> str | None:
    """The path or name of the liboqs shared library, or None; imports nothing."""
    root = find_liboqs_prefix()
    if root is not None:
        for pattern in ("liboqs.so*", "liboqs.dylib", "oqs.dll"):
            hits = sorted(glob.glob(os.path.join(root, "lib", pattern)))
            if hits:
                return hits[0]
    return ctypes.util.find_library("oqs")


@lru_cache(maxsize=1)
def load_oqs() -> Any:
    """Import liboqs-python, only once liboqs itself is known to be present."""
    root = find_liboqs_prefix()
    if root is not None:
        # liboqs-python loads from here and never reaches its auto-installer.
        os.environ["OQS_INSTALL_PATH"] = root
    elif ctypes.util.find_library("oqs") is None:
        raise OqsUnavailable(MISSING_LIBRARY_REASON)
    # liboqs-python adds a stdout handler to its logger at import and logs to it,
    # which would corrupt `--json` output: silence it, and let it go through ours.
    oqs_logger = logging.getLogger("oqs.oqs")
    oqs_logger.disabled = True
    try:
        return importlib.import_module("oqs")
    except ImportError as exc:
        raise OqsUnavailable(
            f"liboqs is installed but liboqs-python is not importable; {INSTALL_HINT}"
        ) from exc
    except SystemExit as exc:  # its auto-installer gave up: never let it end the daemon
        raise OqsUnavailable(f"liboqs-python could not load liboqs; {INSTALL_HINT}") from exc
    finally:
        for handler in list(oqs_logger.handlers):
            oqs_logger.removeHandler(handler)
        oqs_logger.setLevel(logging.WARNING)
        oqs_logger.disabled = False


def available() -> bool:
    try:
        load_oqs()
    except OqsUnavailable:
        return False
    return True


class OqsKem:
    """One liboqs KEM through liboqs-python."""

    def __init__(self, name: str) -> None:
        info = OQS_KEMS[name]
        self._oqs = load_oqs()
        if name not in self._oqs.get_enabled_kem_mechanisms():
            raise OqsUnavailable(f"{name} is not enabled in this liboqs build")
        self.name = name
        self.static_only = info.static_only
        with self._oqs.KeyEncapsulation(name) as kem:
            details = kem.details
        self.public_key_size = int(details["length_public_key"])
        self.ciphertext_size = int(details["length_ciphertext"])
        self.shared_secret_size = int(details["length_shared_secret"])

    def generate(self) -> KemKeyPair:
        kem = self._oqs.KeyEncapsulation(self.name)
        public = bytes(kem.generate_keypair())
        return KemKeyPair(public=public, private=kem)

    def load_static(self, secret_key: bytes, public: bytes) -> KemKeyPair:
        """A static key pair made at provisioning."""
        kem = self._oqs.KeyEncapsulation(self.name, secret_key)
        return KemKeyPair(public=public, private=kem)

    def export_secret(self, pair: KemKeyPair) -> bytes:
        return bytes(pair.private.export_secret_key())  # type: ignore[attr-defined]

    def encapsulate(self, public: bytes) -> tuple[bytearray, bytes]:
        if len(public) != self.public_key_size:
            raise ProviderError(f"{self.name} public key must be {self.public_key_size} bytes")
        with self._oqs.KeyEncapsulation(self.name) as kem:
            ciphertext, shared = kem.encap_secret(public)
        return bytearray(shared), bytes(ciphertext)

    def decapsulate(self, pair: KemKeyPair, ciphertext: bytes) -> bytearray:
        if len(ciphertext) != self.ciphertext_size:
            raise ProviderError(f"{self.name} ciphertext must be {self.ciphertext_size} bytes")
        return bytearray(pair.private.decap_secret(ciphertext))  # type: ignore[attr-defined]
