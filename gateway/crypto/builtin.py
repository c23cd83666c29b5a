"""The built-in provider, on `cryptography` (>= 46 for ML-KEM and ML-DSA).

ML-DSA-65 signatures are verified through liboqs where it is there (mldsa_oqs).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from gateway.crypto import mldsa_oqs
from gateway.crypto.providers import KemKeyPair, ProviderError

PROVIDER_NAME = "cryptography"


class MlKem:
    """ML-KEM (FIPS 203) at one parameter set."""

    static_only = False
    shared_secret_size = 32

    def __init__(self, name: str, private_cls: Any, public_cls: Any, pk_size: int, ct_size: int):
        self.name = name
        self._private_cls = private_cls
        self._public_cls = public_cls
        self.public_key_size = pk_size
        self.ciphertext_size = ct_size

    def generate(self) -> KemKeyPair:
        private = self._private_cls.generate()
        return KemKeyPair(public=private.public_key().public_bytes_raw(), private=private)

    def encapsulate(self, public: bytes) -> tuple[bytearray, bytes]:
        if len(public) != self.public_key_size:
            raise ProviderError(f"{self.name} public key must be {self.public_key_size} bytes")
        try:
            key = self._public_cls.from_public_bytes(public)
        except ValueError as exc:
            raise ProviderError(f"{self.name} public key is malformed") from exc
        shared, ciphertext = key.encapsulate()
        return bytearray(shared), bytes(ciphertext)

    def decapsulate(self, pair: KemKeyPair, ciphertext: bytes) -> bytearray:
        if len(ciphertext) != self.ciphertext_size:
            raise ProviderError(f"{self.name} ciphertext must be {self.ciphertext_size} bytes")
        return bytearray(pair.private.decapsulate(ciphertext))  # type: ignore[attr-defined]


class X25519Kem:
    """X25519 as a KEM: the ciphertext is the encapsulator's ephemeral public key."""

    name = "X25519"
    public_key_size = 32
    ciphertext_size = 32
    shared_secret_size = 32
    static_only = False

    def generate(self) -> KemKeyPair:
        private = x25519.X25519PrivateKey.generate()
        return KemKeyPair(public=private.public_key().public_bytes_raw(), private=private)

    def encapsulate(self, public: bytes) -> tuple[bytearray, bytes]:
        peer = self._load(public)
        eph = x25519.X25519PrivateKey.generate()
        try:
            shared = eph.exchange(peer)
        except ValueError as exc:  # all-zero output: a small-order point
            raise ProviderError("X25519 public key is of small order") from exc
        return bytearray(shared), eph.public_key().public_bytes_raw()

    def decapsulate(self, pair: KemKeyPair, ciphertext: bytes) -> bytearray:
        peer = self._load(ciphertext)
        try:
            return bytearray(pair.private.exchange(peer))  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ProviderError("X25519 public key is of small order") from exc

    @staticmethod
    def _load(public: bytes) -> x25519.X25519PublicKey:
        if len(public) != 32:
            raise ProviderError("X25519 public key must be 32 bytes")
        return x25519.X25519PublicKey.from_public_bytes(public)


@lru_cache(maxsize=64)
def _ed25519_public(data: bytes) -> ed25519.Ed25519PublicKey:
    return ed25519.Ed25519PublicKey.from_public_bytes(data)


@lru_cache(maxsize=64)
def _mldsa65_public(data: bytes) -> mldsa.MLDSA65PublicKey:
    return mldsa.MLDSA65PublicKey.from_public_bytes(data)


@lru_cache(maxsize=64)
def _mldsa87_public(data: bytes) -> mldsa.MLDSA87PublicKey:
    return mldsa.MLDSA87PublicKey.from_public_bytes(data)


class Ed25519Scheme:
    """Ed25519 (RFC 8032); it has no context input, so the context is prefixed."""

    name = "Ed25519"
    public_key_size = 32
    signature_size = 64

    def generate(self) -> object:
        return ed25519.Ed25519PrivateKey.generate()

    def public_bytes(self, private: object) -> bytes:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        return private.public_key().public_bytes_raw()

    def private_bytes(self, private: object) -> bytes:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        return private.private_bytes_raw()

    def load_private(self, data: bytes) -> object:
        if len(data) != 32:
            raise ProviderError("Ed25519 private key must be 32 bytes")
        return ed25519.Ed25519PrivateKey.from_private_bytes(data)

    def sign(self, private: object, message: bytes, context: bytes) -> bytes:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        return private.sign(_with_context(context, message))

    def verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        if len(public) != 32 or len(signature) != 64:
            return False
        try:
            _ed25519_public(public).verify(signature, _with_context(context, message))
        except (InvalidSignature, ValueError):
            return False
        return True


class MlDsaScheme:
    """ML-DSA (FIPS 204) with its native context string."""

    def __init__(
        self, name: str, private_cls: Any, loader: Any, pk_size: int, sig_size: int,
        fast_verify: Callable[[bytes, bytes, bytes, bytes], bool | None] | None = None,
    ) -> None:
        self.name = name
        self._private_cls = private_cls
        self._loader = loader
        self.public_key_size = pk_size
        self.signature_size = sig_size
        # A faster implementation's verdict (mldsa_oqs), None where it is not there.
        self._fast_verify = fast_verify

    def generate(self) -> object:
        return self._private_cls.generate()

    def public_bytes(self, private: object) -> bytes:
        return private.public_key().public_bytes_raw()  # type: ignore[attr-defined,no-any-return]

    def private_bytes(self, private: object) -> bytes:
        return private.private_bytes_raw()  # type: ignore[attr-defined,no-any-return]

    def load_private(self, data: bytes) -> object:
        if len(data) != 32:
            raise ProviderError(f"{self.name} private key seed must be 32 bytes")
        return self._private_cls.from_seed_bytes(data)

    def sign(self, private: object, message: bytes, context: bytes) -> bytes:
        return private.sign(message, context)  # type: ignore[attr-defined,no-any-return]

    def verify(self, public: bytes, signature: bytes, message: bytes, context: bytes) -> bool:
        if len(public) != self.public_key_size or len(signature) != self.signature_size:
            return False
        if self._fast_verify is not None:
            verdict = self._fast_verify(public, signature, message, context)
            if verdict is not None:
                return verdict
        try:
            self._loader(public).verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True


def _with_context(context: bytes, message: bytes) -> bytes:
    return len(context).to_bytes(1, "big") + context + message


ML_KEM_768 = MlKem("ML-KEM-768", mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088)
ML_KEM_1024 = MlKem(
    "ML-KEM-1024", mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568
)
X25519 = X25519Kem()
ED25519 = Ed25519Scheme()
ML_DSA_65 = MlDsaScheme("ML-DSA-65", mldsa.MLDSA65PrivateKey, _mldsa65_public, 1952, 3309,
                        fast_verify=mldsa_oqs.verify)
ML_DSA_87 = MlDsaScheme("ML-DSA-87", mldsa.MLDSA87PrivateKey, _mldsa87_public, 2592, 4627)

KEMS = {k.name: k for k in (ML_KEM_768, ML_KEM_1024, X25519)}
SIGNATURES = {s.name: s for s in (ED25519, ML_DSA_65, ML_DSA_87)}
