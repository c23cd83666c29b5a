"""ML-DSA-65 through liboqs: the same keys as OpenSSL's, each verifies the other's
signatures, and a forgery fails both."""

from __future__ import annotations

import ctypes
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from gateway.crypto import mldsa_oqs
from gateway.crypto.builtin import ML_DSA_65
from gateway.identity import LocalIdentity

pytestmark = pytest.mark.usefixtures("liboqs")

MSG, CTX = b"an INIT's signed bytes" * 40, b"qsgw/1 test"


@pytest.fixture
def liboqs() -> None:
    from tests.liboqs_gate import require_liboqs

    require_liboqs()


def _openssl_verifies(public: bytes, sig: bytes, msg: bytes, ctx: bytes) -> bool:
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(public).verify(sig, msg, ctx)
    except InvalidSignature:
        return False
    return True


def test_the_key_expanded_from_a_seed_is_openssls_and_their_signatures_interoperate() -> None:
    assert mldsa_oqs.available()
    for _ in range(5):
        seed = os.urandom(32)
        key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        public = key.public_key().public_bytes_raw()
        signer = mldsa_oqs.OqsMlDsa65Signer.from_seed(seed, public)
        assert signer is not None
        by_oqs = signer.sign(MSG, CTX)
        by_openssl = key.sign(MSG, CTX)
        assert len(by_oqs) == mldsa_oqs.SIGNATURE_BYTES
        assert _openssl_verifies(public, by_oqs, MSG, CTX)
        assert mldsa_oqs.verify(public, by_openssl, MSG, CTX) is True
        # A changed message, context, signature or key fails in both.
        flipped = bytes([by_oqs[0] ^ 1]) + by_oqs[1:]
        other = mldsa.MLDSA65PrivateKey.generate().public_key().public_bytes_raw()
        for pub, sig, msg, ctx in ((public, by_oqs, MSG + b"!", CTX),
                                   (public, by_oqs, MSG, CTX + b"!"),
                                   (public, flipped, MSG, CTX),
                                   (other, by_oqs, MSG, CTX)):
            assert mldsa_oqs.verify(pub, sig, msg, ctx) is False
            assert not _openssl_verifies(pub, sig, msg, ctx)
        signer.close()


def test_the_identity_signs_through_liboqs_and_openssl_accepts_it() -> None:
    ident = LocalIdentity.generate()
    sig_ed, sig_ml = ident.sign(MSG, CTX)
    assert isinstance(ident._mldsa_fast, mldsa_oqs.OqsMlDsa65Signer)
    assert _openssl_verifies(ident.public.mldsa65, sig_ml, MSG, CTX)
    assert ident.public.verify(MSG, sig_ed, sig_ml, CTX)
    assert not ident.public.verify(MSG, sig_ed, sig_ml, CTX + b"x")
    # A loaded identity (seed files) signs the same way, under the same public key.
    assert ML_DSA_65.verify(ident.public.mldsa65, ident.sign(b"m", CTX)[1], b"m", CTX)


def test_a_seed_that_expands_to_another_key_leaves_openssl_signing() -> None:
    seed = os.urandom(32)
    wrong = mldsa.MLDSA65PrivateKey.generate().public_key().public_bytes_raw()
    assert mldsa_oqs.OqsMlDsa65Signer.from_seed(seed, wrong) is None
    assert mldsa_oqs.OqsMlDsa65Signer.from_seed(seed[:31], wrong) is None


def test_close_wipes_the_expanded_secret_key() -> None:
    seed = os.urandom(32)
    public = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
    signer = mldsa_oqs.OqsMlDsa65Signer.from_seed(seed, public)
    assert signer is not None
    buf = signer._sig.secret_key
    assert any(buf.raw)
    signer.close()
    assert ctypes.string_at(ctypes.addressof(buf), mldsa_oqs.SECRET_KEY_BYTES) == \
        bytes(mldsa_oqs.SECRET_KEY_BYTES)
    with pytest.raises(RuntimeError, match="closed"):
        signer.sign(MSG, CTX)
