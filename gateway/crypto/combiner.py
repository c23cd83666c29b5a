"""The combiner: ETSI TS 103 744 CatKDF with HKDF (SHA-384), and the confirmation MACs.

CatKDF (TS 103 744 clause 8.2, with the HKDF KDF of clause 7.4.2 and the
concatenate-and-hash formatting function of clause 7.2.3, as the reference
implementation numbers them):

    secrets = psk || k1 || k2
    context = H(u32be(len info) || info || u32be(len MA) || MA || u32be(len MB) || MB)
    key     = HKDF(salt = label, IKM = secrets, info = context, L)

Our use: psk is the epoch's QKD key (empty when absent), k1 the X25519
secret, k2 the post-quantum secrets in suite order (a McEliece suite gives
McEliece then ML-KEM); MA is the whole INIT, MB the RESP up to its MAC;
info binds the protocol, the suite, the components (``qkd:absent`` when QKD
was not used, so its absence changes every output) and the transcript hash;
each output has its own label. The result is secret while any one input is.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.crypto.memory import wipe

TUNNEL_KEY_SIZE = 32
CONFIRM_KEY_SIZE = 48
HASH_SIZE = 48
INFO_PREFIX = b"qsgw/2 CatKDF-HKDF-SHA-384"
LABEL_TUNNEL = b"qsgw/2 tunnel key"
LABEL_INITIATOR_CONFIRM = b"qsgw/2 initiator confirm"
LABEL_RESPONDER_CONFIRM = b"qsgw/2 responder confirm"
CLASSICAL_KEM = "X25519"
QKD_KEY_MIN = 16
QKD_KEY_MAX = 64
_HASHES = {"SHA256": hashes.SHA256, "SHA384": hashes.SHA384}


class CombinerError(ValueError):
    """The combiner's inputs are malformed (message names the input, never a value)."""


@dataclass
class EpochKeys:
    """The outputs for one epoch, as wipeable buffers."""

    tunnel_key: bytearray = field(repr=False)
    initiator_confirm: bytearray = field(repr=False)
    responder_confirm: bytearray = field(repr=False)

    def wipe(self) -> None:
        wipe(self.tunnel_key)
        wipe(self.initiator_confirm)
        wipe(self.responder_confirm)


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def catkdf_context(hash_name: str, info: bytes, ma: bytes, mb: bytes) -> bytes:
    """The concatenate-and-hash formatting function: H over the length-prefixed inputs."""
    h = hashlib.new(hash_name.lower())
    for part in (info, ma, mb):
        h.update(_u32(len(part)))
        h.update(part)
    return h.digest()


def catkdf_hkdf(
    hash_name: str,
    psk: bytes | bytearray,
    secrets: Sequence[bytes | bytearray],
    ma: bytes,
    mb: bytes,
    info: bytes,
    label: bytes,
    length: int,
) -> bytearray:
    """TS 103 744 CatKDF with HKDF: ``secrets`` are k1, k2 (, ...) in order."""
    if hash_name not in _HASHES:
        raise CombinerError(f"hash must be one of {', '.join(_HASHES)}")
    context = catkdf_context(hash_name, info, ma, mb)
    ikm = bytearray(psk)
    out = bytearray(length)
    try:
        for secret in secrets:
            ikm += secret
        HKDF(_HASHES[hash_name](), length, label, context).derive_into(bytes(ikm), out)
    finally:
        wipe(ikm)
    return out


def sources_descriptor(qkd_key_size: int | None, kems: Sequence[tuple[str, int]]) -> bytes:
    """The components, in the order of ``secrets`` (psk, k1, k2...), as bound into info."""
    parts = ["qkd:absent" if qkd_key_size is None else f"qkd:{qkd_key_size}"]
    parts.extend(f"{name}:{size}" for name, size in kems)
    return ";".join(parts).encode("ascii")


def kdf_info(suite: str, descriptor: bytes, transcript_hash: bytes) -> bytes:
    """CatKDF's info for our handshake."""
    return b"\x00".join((INFO_PREFIX, suite.encode("ascii"), descriptor, transcript_hash))


def catkdf_order(
    kem_secrets: Sequence[tuple[str, bytes | bytearray]],
) -> list[tuple[str, bytes | bytearray]]:
    """Suite order (X25519 last) to CatKDF order: X25519 (k1), then the PQ secrets (k2)."""
    classical = [ks for ks in kem_secrets if ks[0] == CLASSICAL_KEM]
    if len(classical) != 1:
        raise CombinerError(f"exactly one {CLASSICAL_KEM} shared secret is required")
    post_quantum = [ks for ks in kem_secrets if ks[0] != CLASSICAL_KEM]
    if not post_quantum:
        raise CombinerError("at least one post-quantum KEM shared secret is required")
    return classical + post_quantum


def combine(
    qkd_key: bytes | bytearray | None,
    kem_secrets: Sequence[tuple[str, bytes | bytearray]],
    *,
    suite: str,
    transcript_hash: bytes,
    ma: bytes,
    mb: bytes,
) -> EpochKeys:
    """Derive the tunnel key and both confirmation keys with CatKDF.

    ``qkd_key`` is the concatenation of the epoch's QKD keys (None when QKD
    was not used); ``kem_secrets`` are (algorithm name, shared secret) in
    suite order; ``ma``/``mb`` are INIT and the RESP up to its MAC.
    """
    if len(transcript_hash) != HASH_SIZE:
        raise CombinerError(f"transcript hash must be {HASH_SIZE} bytes")
    if qkd_key is not None and len(qkd_key) < QKD_KEY_MIN:
        raise CombinerError(f"QKD key material must be at least {QKD_KEY_MIN} bytes")
    for name, secret in kem_secrets:
        if not secret:
            raise CombinerError(f"shared secret of {name} is empty")
    ordered = catkdf_order(kem_secrets)
    descriptor = sources_descriptor(
        None if qkd_key is None else len(qkd_key), [(n, len(s)) for n, s in ordered]
    )
    info = kdf_info(suite, descriptor, transcript_hash)
    psk = b"" if qkd_key is None else qkd_key
    secrets = [s for _, s in ordered]

    def derive(label: bytes, size: int) -> bytearray:
        return catkdf_hkdf("SHA384", psk, secrets, ma, mb, info, label, size)

    return EpochKeys(
        tunnel_key=derive(LABEL_TUNNEL, TUNNEL_KEY_SIZE),
        initiator_confirm=derive(LABEL_INITIATOR_CONFIRM, CONFIRM_KEY_SIZE),
        responder_confirm=derive(LABEL_RESPONDER_CONFIRM, CONFIRM_KEY_SIZE),
    )


def confirmation_mac(key: bytes | bytearray, label: bytes, data: bytes) -> bytes:
    """HMAC-SHA-384 under a confirmation key, domain-separated by ``label``."""
    return hmac.new(bytes(key), label + b"\x00" + data, "sha384").digest()


def check_mac(key: bytes | bytearray, label: bytes, data: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(confirmation_mac(key, label, data), mac)
