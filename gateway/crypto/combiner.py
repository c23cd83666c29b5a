"""The combiner: CatKDF (ETSI TS 103 744) over HKDF-SHA-384.

IKM = k_qkd || ss_1 || ... || ss_n (suite order, X25519 last). The transcript
hash is the HKDF salt; the info of each output is its label followed by a
description of the components (name and length, or ``qkd:absent``), so a
missing QKD key changes every output rather than being replaced by zeros, and
the variable-length concatenation cannot be re-split differently.
The result is secret while any one component is.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from gateway.crypto.memory import wipe

TUNNEL_KEY_SIZE = 32
CONFIRM_KEY_SIZE = 48
HASH_SIZE = 48
LABEL_TUNNEL = b"qsgw/1 tunnel key"
LABEL_INITIATOR_CONFIRM = b"qsgw/1 initiator confirm"
LABEL_RESPONDER_CONFIRM = b"qsgw/1 responder confirm"
QKD_KEY_MIN = 16
QKD_KEY_MAX = 64


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


def sources_descriptor(qkd_key_size: int | None, kems: Sequence[tuple[str, int]]) -> bytes:
    """The components, in IKM order, as bound into every output's info."""
    parts = ["qkd:absent" if qkd_key_size is None else f"qkd:{qkd_key_size}"]
    parts.extend(f"{name}:{size}" for name, size in kems)
    return ";".join(parts).encode("ascii")


def combine(
    qkd_key: bytes | bytearray | None,
    kem_secrets: Sequence[tuple[str, bytes | bytearray]],
    transcript_hash: bytes,
) -> EpochKeys:
    """Derive the tunnel key and both confirmation keys.

    ``qkd_key`` is the concatenation of the epoch's QKD keys (None when QKD
    was not used); ``kem_secrets`` are (algorithm name, shared secret) in suite
    order. At least one KEM secret is required.
    """
    if not kem_secrets:
        raise CombinerError("at least one KEM shared secret is required")
    if len(transcript_hash) != HASH_SIZE:
        raise CombinerError(f"transcript hash must be {HASH_SIZE} bytes")
    if qkd_key is not None and len(qkd_key) < QKD_KEY_MIN:
        raise CombinerError(f"QKD key material must be at least {QKD_KEY_MIN} bytes")
    for name, secret in kem_secrets:
        if not secret:
            raise CombinerError(f"shared secret of {name} is empty")
    descriptor = sources_descriptor(
        None if qkd_key is None else len(qkd_key), [(n, len(s)) for n, s in kem_secrets]
    )
    ikm = bytearray()
    try:
        if qkd_key is not None:
            ikm += qkd_key
        for _, secret in kem_secrets:
            ikm += secret
        prk = HKDF.extract(hashes.SHA384(), transcript_hash, bytes(ikm))
    finally:
        wipe(ikm)
    return EpochKeys(
        tunnel_key=_expand(prk, LABEL_TUNNEL, descriptor, TUNNEL_KEY_SIZE),
        initiator_confirm=_expand(prk, LABEL_INITIATOR_CONFIRM, descriptor, CONFIRM_KEY_SIZE),
        responder_confirm=_expand(prk, LABEL_RESPONDER_CONFIRM, descriptor, CONFIRM_KEY_SIZE),
    )


def _expand(prk: bytes, label: bytes, descriptor: bytes, size: int) -> bytearray:
    out = bytearray(size)
    HKDFExpand(hashes.SHA384(), size, label + b"\x00" + descriptor).derive_into(prk, out)
    return out


def confirmation_mac(key: bytes | bytearray, label: bytes, data: bytes) -> bytes:
    """HMAC-SHA-384 under a confirmation key, domain-separated by ``label``."""
    return hmac.new(bytes(key), label + b"\x00" + data, "sha384").digest()


def check_mac(key: bytes | bytearray, label: bytes, data: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(confirmation_mac(key, label, data), mac)
