"""ML-DSA-65 signing and verification through liboqs, from the identity's own seed.

OpenSSL's ML-DSA-65 (the `cryptography` wheel's) costs 1.7 ms a signature and
0.47 ms a verification here; liboqs's (mldsa-native, AVX2 where the CPU has it)
0.19 and 0.07 ms. Every epoch signs and verifies once on each side, and a
hub makes dozens of epochs a second, so the identity signs through liboqs when
the library `make setup` built is there, and through OpenSSL otherwise. Both are
FIPS 204 with a context string: each verifies the other's signatures (tests).

The identity file keeps the 32-byte seed. liboqs signs with the expanded secret
key, which it makes from a seed only through mldsa-native's `keypair_internal`
(FIPS 204 ML-DSA.KeyGen_internal), an exported symbol of the pinned liboqs. The
key it expands is used only if its public half equals OpenSSL's from the same
seed; any doubt (no liboqs, no symbol, another key) leaves OpenSSL signing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from functools import lru_cache
from typing import Any

from gateway.crypto import oqs_provider

log = logging.getLogger(__name__)

NAME = "ML-DSA-65"
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 1952
SECRET_KEY_BYTES = 4032
SIGNATURE_BYTES = 3309
# The portable build of the key expansion: a key is made once, at load, so its
# speed does not matter, and it exists on every CPU liboqs builds for.
_EXPAND_SYMBOL = "PQCP_MLDSA_NATIVE_MLDSA65_C_keypair_internal"


@lru_cache(maxsize=1)
def _oqs() -> Any | None:
    """liboqs-python on the library setup built, with ML-DSA-65 on; None when not."""
    try:
        oqs = oqs_provider.load_oqs()
    except oqs_provider.OqsUnavailable:
        return None
    if NAME not in oqs.get_enabled_sig_mechanisms():
        return None
    return oqs


@lru_cache(maxsize=1)
def _expand_fn() -> Any | None:
    oqs = _oqs()
    if oqs is None:
        return None
    fn = getattr(oqs.native(), _EXPAND_SYMBOL, None)
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    return fn


class OqsMlDsa65Signer:
    """Signs with liboqs under a secret key expanded from the identity's seed."""

    def __init__(self, sig: Any) -> None:
        self._sig = sig
        self._lock = threading.Lock()  # free() must not run under a signature

    @classmethod
    def from_seed(cls, seed: bytes, expected_public: bytes) -> OqsMlDsa65Signer | None:
        """The signer for this seed, or None (use OpenSSL): no liboqs, no key
        expansion, or a public key other than `expected_public`."""
        fn = _expand_fn()
        oqs = _oqs()
        if fn is None or oqs is None or len(seed) != SEED_BYTES:
            return None
        public = ctypes.create_string_buffer(PUBLIC_KEY_BYTES)
        secret = ctypes.create_string_buffer(SECRET_KEY_BYTES)
        if fn(public, secret, seed) != 0 or public.raw != expected_public:
            ctypes.memset(secret, 0, SECRET_KEY_BYTES)
            log.warning("ML-DSA-65 through liboqs gave another key than OpenSSL from the same "
                        "seed: signing through OpenSSL")
            return None
        sig = oqs.Signature(NAME)
        # The buffer itself, not a bytes copy, so that free() wipes the only copy.
        sig.secret_key = secret
        return cls(sig)

    def sign(self, message: bytes, context: bytes) -> bytes:
        with self._lock:
            if self._sig is None:
                raise RuntimeError("ML-DSA-65 signer was closed")
            return bytes(self._sig.sign_with_ctx_str(message, context))

    def close(self) -> None:
        """Wipe the expanded secret key."""
        with self._lock:
            if self._sig is not None:
                self._sig.free()
                self._sig = None

    def __del__(self) -> None:
        # At interpreter exit, ctypes may already be torn down.
        with contextlib.suppress(Exception):
            self.close()


@lru_cache(maxsize=1)
def _verifier() -> Any | None:
    oqs = _oqs()
    return None if oqs is None else oqs.Signature(NAME)


def verify(public: bytes, signature: bytes, message: bytes, context: bytes) -> bool | None:
    """liboqs's verdict on an ML-DSA-65 signature (sizes checked by the caller), or
    None when liboqs is not there and OpenSSL must judge."""
    verifier = _verifier()
    if verifier is None:
        return None
    return bool(verifier.verify_with_ctx_str(message, signature, context, public))


def available() -> bool:
    """ML-DSA-65 signs and verifies through liboqs in this process."""
    return _expand_fn() is not None
