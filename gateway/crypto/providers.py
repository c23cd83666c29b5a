"""The small KEM and signature interfaces every provider implements.

A KEM here is anything with keygen / encapsulate / decapsulate; X25519 is
wrapped as a KEM (the "ciphertext" is the responder's ephemeral public key) so
that the handshake treats every key-exchange component alike and the combiner
gets one shared secret per component, in suite order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class ProviderError(Exception):
    """A provider could not perform an operation (bad key or ciphertext encoding)."""


@dataclass(frozen=True)
class KemKeyPair:
    """An ephemeral (or static) KEM key pair; the private part is opaque."""

    public: bytes
    private: object = field(repr=False)


@runtime_checkable
class Kem(Protocol):
    """A key-encapsulation mechanism."""

    name: str
    public_key_size: int
    ciphertext_size: int
    shared_secret_size: int
    # Static KEMs (Classic McEliece) use keys made at provisioning, not per epoch.
    static_only: bool

    def generate(self) -> KemKeyPair: ...

    def encapsulate(self, public: bytes) -> tuple[bytearray, bytes]:
        """Return (shared secret, ciphertext); raises ProviderError on a bad key."""
        ...

    def decapsulate(self, pair: KemKeyPair, ciphertext: bytes) -> bytearray:
        """Return the shared secret; raises ProviderError on a malformed ciphertext."""
        ...


@runtime_checkable
class SignatureScheme(Protocol):
    """A signature algorithm over raw public keys."""

    name: str
    public_key_size: int

    def generate(self) -> object:
        """Return a new private key object (opaque to callers)."""
        ...

    def public_bytes(self, private: object) -> bytes: ...

    def private_bytes(self, private: object) -> bytes:
        """The private key's seed, for storage in a 0600 file."""
        ...

    def load_private(self, data: bytes) -> object: ...

    def sign(self, private: object, message: bytes, context: bytes) -> bytes: ...

    def verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        """True only for a valid signature; never raises on bad input."""
        ...
