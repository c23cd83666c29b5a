"""Combiner test vectors: the inputs are fixed, so anyone can recompute the outputs.

`python -m tests.crypto.vectors > docs/test-vectors.json` regenerates the file;
tests/crypto/test_vectors.py checks that the code still reproduces it. The
shared-secret sizes are each suite's real ones; the values are derived from
labels so that the vectors need no KEM to recompute.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.crypto.combiner import (
    LABEL_INITIATOR_CONFIRM,
    LABEL_RESPONDER_CONFIRM,
    LABEL_TUNNEL,
    catkdf_order,
    combine,
    kdf_info,
    sources_descriptor,
)
from gateway.handshake.messages import PROTOCOL_VERSION


def _b(label: str, n: int) -> str:
    return hashlib.shake_256(label.encode()).digest(n).hex()


_X = ["X25519", _b("x25519", 32)]
_MLKEM = ["ML-KEM-768", _b("mlkem", 32)]

CASES: list[dict[str, Any]] = [
    {"name": "qkd+mlkem768+x25519", "suite": "default", "qkd": _b("qkd", 32),
     "kems": [_MLKEM, _X]},
    {"name": "no-qkd (preferred, KME unavailable)", "suite": "default", "qkd": None,
     "kems": [_MLKEM, _X]},
    {"name": "two 16-byte qkd keys + mlkem1024 + x25519", "suite": "mlkem1024",
     "qkd": _b("qkd2", 32), "kems": [["ML-KEM-1024", _b("mlkem1024", 32)], _X]},
    {"name": "64-byte qkd key", "suite": "default", "qkd": _b("qkd64", 64),
     "kems": [_MLKEM, _X]},
    *({"name": f"qkd+{kem}+x25519", "suite": suite, "qkd": _b("qkd", 32),
       "kems": [[kem, _b(kem, size)], _X]}
      for suite, kem, size in (
          ("frodo976aes", "FrodoKEM-976-AES", 24), ("frodo976shake", "FrodoKEM-976-SHAKE", 24),
          ("frodo1344aes", "FrodoKEM-1344-AES", 32),
          ("frodo1344shake", "FrodoKEM-1344-SHAKE", 32), ("hqc3", "HQC-3", 32))),
    *({"name": f"qkd+{kem}+mlkem768+x25519", "suite": suite, "qkd": _b("qkd", 32),
       "kems": [[kem, _b(kem, 32)], _MLKEM, _X]}
      for suite, kem in (("mceliece460896f", "Classic-McEliece-460896f"),
                         ("mceliece6688128f", "Classic-McEliece-6688128f"))),
]
TRANSCRIPT_HASH = hashlib.sha384(b"qsgw test transcript").hexdigest()
MA = _b("INIT message", 200)
MB = _b("RESP message up to its MAC", 120)


def compute(case: dict[str, Any]) -> dict[str, str]:
    qkd = None if case["qkd"] is None else bytes.fromhex(case["qkd"])
    kems = [(n, bytes.fromhex(s)) for n, s in case["kems"]]
    th = bytes.fromhex(TRANSCRIPT_HASH)
    keys = combine(qkd, kems, suite=case["suite"], transcript_hash=th,
                   ma=bytes.fromhex(MA), mb=bytes.fromhex(MB))
    ordered = catkdf_order(kems)
    descriptor = sources_descriptor(
        None if qkd is None else len(qkd), [(n, len(s)) for n, s in ordered]
    )
    return {
        "secrets_order": " || ".join(["psk"] + [n for n, _ in ordered]),
        "info": kdf_info(case["suite"], descriptor, th).hex(),
        "tunnel_key": keys.tunnel_key.hex(),
        "initiator_confirm": keys.initiator_confirm.hex(),
        "responder_confirm": keys.responder_confirm.hex(),
    }


def build() -> dict[str, Any]:
    return {
        "description": f"qsgw protocol {PROTOCOL_VERSION} combiner: ETSI TS 103 744 CatKDF "
                       "with HKDF-SHA-384; see docs/security.md",
        "kdf": "secrets = psk || k_X25519 || k_PQ (suite order); context = SHA-384(u32be(len "
               "info) || info || u32be(len MA) || MA || u32be(len MB) || MB); key = "
               "HKDF-SHA-384(salt=label, IKM=secrets, info=context, L)",
        "psk": "the epoch's QKD key(s) concatenated; empty when QKD was not used",
        "info": "'qsgw/2 CatKDF-HKDF-SHA-384' 0x00 suite 0x00 descriptor 0x00 transcript_hash",
        "labels": {"tunnel_key": f"{LABEL_TUNNEL.decode()} (L=32)",
                   "initiator_confirm": f"{LABEL_INITIATOR_CONFIRM.decode()} (L=48)",
                   "responder_confirm": f"{LABEL_RESPONDER_CONFIRM.decode()} (L=48)"},
        "transcript_hash": TRANSCRIPT_HASH,
        "MA": MA,
        "MB": MB,
        "etsi_reference_vectors": "tests/crypto/data/etsi_ts103744_catkdf_hkdf.json",
        "vectors": [{**c, **compute(c)} for c in CASES],
    }


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
