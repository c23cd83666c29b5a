"""Combiner test vectors: the inputs are fixed, so anyone can recompute the outputs.

`python -m tests.crypto.vectors > docs/test-vectors.json` regenerates the file;
tests/crypto/test_vectors.py checks that the code still reproduces it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.crypto.combiner import combine, sources_descriptor


def _b(label: str, n: int) -> bytes:
    return hashlib.shake_256(label.encode()).digest(n)


CASES: list[dict[str, Any]] = [
    {"name": "qkd+mlkem768+x25519", "qkd": _b("qkd", 32).hex(),
     "kems": [["ML-KEM-768", _b("mlkem", 32).hex()], ["X25519", _b("x25519", 32).hex()]]},
    {"name": "no-qkd (preferred, KME unavailable)", "qkd": None,
     "kems": [["ML-KEM-768", _b("mlkem", 32).hex()], ["X25519", _b("x25519", 32).hex()]]},
    {"name": "two 16-byte qkd keys + mlkem1024 + x25519", "qkd": _b("qkd2", 32).hex(),
     "kems": [["ML-KEM-1024", _b("mlkem1024", 32).hex()], ["X25519", _b("x", 32).hex()]]},
    {"name": "64-byte qkd key", "qkd": _b("qkd64", 64).hex(),
     "kems": [["ML-KEM-768", _b("mlkem", 32).hex()], ["X25519", _b("x25519", 32).hex()]]},
]
TRANSCRIPT_HASH = hashlib.sha384(b"qsgw test transcript").hexdigest()


def compute(case: dict[str, Any]) -> dict[str, str]:
    qkd = None if case["qkd"] is None else bytes.fromhex(case["qkd"])
    kems = [(n, bytes.fromhex(s)) for n, s in case["kems"]]
    keys = combine(qkd, kems, bytes.fromhex(TRANSCRIPT_HASH))
    return {
        "info_descriptor": sources_descriptor(
            None if qkd is None else len(qkd), [(n, len(s)) for n, s in kems]
        ).decode(),
        "tunnel_key": keys.tunnel_key.hex(),
        "initiator_confirm": keys.initiator_confirm.hex(),
        "responder_confirm": keys.responder_confirm.hex(),
    }


def build() -> dict[str, Any]:
    return {
        "description": "qsgw combiner (CatKDF, HKDF-SHA-384); see docs/security.md",
        "kdf": "PRK = HKDF-Extract(SHA-384, salt=transcript_hash, IKM=qkd||ss_1||...||ss_n); "
               "out = HKDF-Expand(PRK, label || 0x00 || info_descriptor, L)",
        "labels": {"tunnel_key": "qsgw/1 tunnel key (L=32)",
                   "initiator_confirm": "qsgw/1 initiator confirm (L=48)",
                   "responder_confirm": "qsgw/1 responder confirm (L=48)"},
        "transcript_hash": TRANSCRIPT_HASH,
        "vectors": [{**c, **compute(c)} for c in CASES],
    }


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
