"""The four messages of the key agreement and the protocol's constants.

INIT (initiator -> responder), RESP, FINISH, DONE (responder -> initiator,
after the responder installed the key). INIT and RESP are signed with Ed25519
and ML-DSA-65; RESP, FINISH and DONE carry key-confirmation MACs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# 2: the ETSI TS 103 744 CatKDF key schedule. Version 1 (the earlier
# HKDF-based combiner) derives different keys, so it is refused by name.
PROTOCOL_VERSION = 2
RETIRED_VERSIONS = {1: "its pre-CatKDF key schedule derives different keys"}
MAX_MESSAGE_SIZE = 65536
NONCE_SIZE = 32
MAC_SIZE = 48
MAX_ID_LEN = 64
MAX_SUITE_LEN = 32
MAX_KEY_IDS = 16
MAX_KEY_ID_LEN = 128
MAX_COMPONENTS = 8
MAX_SIGNATURE_LEN = 8192


class MessageType(enum.IntEnum):
    INIT = 1
    RESP = 2
    FINISH = 3
    DONE = 4


class QkdOutcome(enum.IntEnum):
    """QKD as seen by the responder after fetching the keys by ID."""

    NOT_USED = 0
    OK = 1
    UNAVAILABLE = 2


@dataclass(frozen=True)
class Init:
    initiator_id: str
    responder_id: str
    epoch: int
    timestamp_ms: int
    nonce: bytes
    suite: str
    qkd_used: bool
    key_ids: tuple[str, ...]
    public_keys: tuple[bytes, ...]
    sig_ed25519: bytes
    sig_mldsa: bytes
    wire: bytes  # the whole encoded message
    signed_len: int  # bytes of ``wire`` covered by the signatures

    @property
    def signed_part(self) -> bytes:
        return self.wire[: self.signed_len]


@dataclass(frozen=True)
class Resp:
    initiator_id: str
    responder_id: str
    epoch: int
    timestamp_ms: int
    nonce: bytes
    qkd_outcome: QkdOutcome
    ciphertexts: tuple[bytes, ...]
    mac: bytes
    sig_ed25519: bytes
    sig_mldsa: bytes
    wire: bytes
    kdf_len: int  # bytes of ``wire`` before the MAC: bound into the key
    signed_len: int  # bytes covered by the signatures (up to and including the MAC)

    @property
    def kdf_part(self) -> bytes:
        return self.wire[: self.kdf_len]


@dataclass(frozen=True)
class Confirm:
    """FINISH or DONE: who, which epoch, and a MAC over the transcript."""

    type: MessageType
    initiator_id: str
    responder_id: str
    epoch: int
    mac: bytes
    wire: bytes
    mac_offset: int

    @property
    def header(self) -> bytes:
        return self.wire[: self.mac_offset]


Message = Init | Resp | Confirm
