"""What each signature and MAC covers, and the transcript hashes.

TH1 = SHA-384(label || len(INIT) || INIT || RESP up to its MAC) goes into the
CatKDF info (beside INIT and RESP as MA and MB), so the tunnel key binds the
suite, the key_IDs, the QKD outcome, every public key and ciphertext, both
nonces and both identities. Later hashes chain on.
"""

from __future__ import annotations

import hashlib

SIG_CONTEXT_INIT = b"qsgw/2 INIT"
SIG_CONTEXT_RESP = b"qsgw/2 RESP"
MAC_LABEL_RESP = b"qsgw/2 RESP mac"
MAC_LABEL_FINISH = b"qsgw/2 FINISH mac"
MAC_LABEL_DONE = b"qsgw/2 DONE mac"


def _h(*parts: bytes) -> bytes:
    h = hashlib.sha384()
    for p in parts:
        h.update(p)
    return h.digest()


def th1(init_wire: bytes, resp_kdf_part: bytes) -> bytes:
    return _h(b"qsgw/2 TH1", len(init_wire).to_bytes(4, "big"), init_wire, resp_kdf_part)


def resp_signed_message(th1_hash: bytes, resp_mac: bytes) -> bytes:
    return th1_hash + resp_mac


def th2(th1_hash: bytes, resp_wire: bytes) -> bytes:
    return _h(b"qsgw/2 TH2", th1_hash, resp_wire)


def th3(th2_hash: bytes, finish_wire: bytes) -> bytes:
    return _h(b"qsgw/2 TH3", th2_hash, finish_wire)
