"""The binary codec: versioned, every field length-checked, a size cap.

Layout: version u8, type u8, then the fields of the type. Strings are
u8-length-prefixed ASCII, byte strings u16-length-prefixed, integers big-endian.
Unknown versions or types and trailing bytes are refused; ``DecodeError`` is
the only exception that escapes ``decode``.
"""

from __future__ import annotations

import re
import struct

from gateway.handshake.errors import DecodeError
from gateway.handshake.messages import (
    MAC_SIZE,
    MAX_COMPONENTS,
    MAX_ID_LEN,
    MAX_KEY_ID_LEN,
    MAX_KEY_IDS,
    MAX_MESSAGE_SIZE,
    MAX_SIGNATURE_LEN,
    MAX_SUITE_LEN,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    RETIRED_VERSIONS,
    Confirm,
    Init,
    Message,
    MessageType,
    QkdOutcome,
    Resp,
)

_ID_RE = re.compile(rb"[A-Za-z0-9._:@-]+")
_SUITE_RE = re.compile(rb"[a-z0-9-]+")
_KEY_ID_RE = re.compile(rb"[\x21-\x7e]+")
_U64_MAX = 2**64 - 1


class _Writer:
    def __init__(self, msg_type: MessageType) -> None:
        self.buf = bytearray((PROTOCOL_VERSION, int(msg_type)))

    def u8(self, value: int) -> None:
        self.buf.append(value)

    def u64(self, value: int) -> None:
        if not 0 <= value <= _U64_MAX:
            raise ValueError("integer field out of range")
        self.buf += struct.pack(">Q", value)

    def fixed(self, data: bytes, size: int) -> None:
        if len(data) != size:
            raise ValueError(f"fixed field must be {size} bytes")
        self.buf += data

    def text(self, value: str, max_len: int) -> None:
        raw = value.encode("ascii")
        if not 1 <= len(raw) <= max_len:
            raise ValueError(f"text field must be 1..{max_len} bytes")
        self.buf.append(len(raw))
        self.buf += raw

    def blob(self, data: bytes, max_len: int = 0xFFFF) -> None:
        if not 1 <= len(data) <= max_len:
            raise ValueError(f"byte field must be 1..{max_len} bytes")
        self.buf += struct.pack(">H", len(data))
        self.buf += data

    def done(self) -> bytes:
        if len(self.buf) > MAX_MESSAGE_SIZE:
            raise ValueError(f"message exceeds {MAX_MESSAGE_SIZE} bytes")
        return bytes(self.buf)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"truncated {what}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "big")

    def text(self, what: str, max_len: int, pattern: re.Pattern[bytes]) -> str:
        n = self.u8(what)
        if not 1 <= n <= max_len:
            raise DecodeError(f"{what} length {n} outside 1..{max_len}")
        raw = self.take(n, what)
        if pattern.fullmatch(raw) is None:
            raise DecodeError(f"{what} has characters outside the allowed set")
        return raw.decode("ascii")

    def blob(self, what: str, max_len: int = 0xFFFF) -> bytes:
        n = int.from_bytes(self.take(2, what), "big")
        if not 1 <= n <= max_len:
            raise DecodeError(f"{what} length {n} outside 1..{max_len}")
        return self.take(n, what)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes")


# --- encoding ---------------------------------------------------------------


def encode_init_signed(
    initiator_id: str,
    responder_id: str,
    epoch: int,
    timestamp_ms: int,
    nonce: bytes,
    suite: str,
    qkd_used: bool,
    key_ids: tuple[str, ...],
    public_keys: tuple[bytes, ...],
) -> bytes:
    """The signed part of INIT (everything before the signatures)."""
    w = _Writer(MessageType.INIT)
    w.text(initiator_id, MAX_ID_LEN)
    w.text(responder_id, MAX_ID_LEN)
    w.u64(epoch)
    w.u64(timestamp_ms)
    w.fixed(nonce, NONCE_SIZE)
    w.text(suite, MAX_SUITE_LEN)
    w.u8(1 if qkd_used else 0)
    if len(key_ids) > MAX_KEY_IDS:
        raise ValueError(f"at most {MAX_KEY_IDS} key_IDs")
    w.u8(len(key_ids))
    for key_id in key_ids:
        w.text(key_id, MAX_KEY_ID_LEN)
    _components(w, public_keys)
    return w.done()


def encode_resp_kdf(
    initiator_id: str,
    responder_id: str,
    epoch: int,
    timestamp_ms: int,
    nonce: bytes,
    qkd_outcome: QkdOutcome,
    ciphertexts: tuple[bytes, ...],
) -> bytes:
    """The part of RESP bound into the key (everything before the MAC)."""
    w = _Writer(MessageType.RESP)
    w.text(initiator_id, MAX_ID_LEN)
    w.text(responder_id, MAX_ID_LEN)
    w.u64(epoch)
    w.u64(timestamp_ms)
    w.fixed(nonce, NONCE_SIZE)
    w.u8(int(qkd_outcome))
    _components(w, ciphertexts)
    return w.done()


def append_signatures(signed: bytes, sig_ed25519: bytes, sig_mldsa: bytes) -> bytes:
    w = _Writer(MessageType.INIT)
    w.buf = bytearray(signed)
    w.blob(sig_ed25519, MAX_SIGNATURE_LEN)
    w.blob(sig_mldsa, MAX_SIGNATURE_LEN)
    return w.done()


def encode_confirm_header(
    msg_type: MessageType, initiator_id: str, responder_id: str, epoch: int
) -> bytes:
    if msg_type not in (MessageType.FINISH, MessageType.DONE):
        raise ValueError("confirmation messages are FINISH or DONE")
    w = _Writer(msg_type)
    w.text(initiator_id, MAX_ID_LEN)
    w.text(responder_id, MAX_ID_LEN)
    w.u64(epoch)
    return w.done()


def _components(w: _Writer, items: tuple[bytes, ...]) -> None:
    if not 1 <= len(items) <= MAX_COMPONENTS:
        raise ValueError(f"1..{MAX_COMPONENTS} key components")
    w.u8(len(items))
    for item in items:
        w.blob(item)


# --- decoding ---------------------------------------------------------------


def peek_type(data: bytes) -> MessageType:
    """The type of a message, after checking the size cap and version only."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message exceeds {MAX_MESSAGE_SIZE} bytes")
    if len(data) < 2:
        raise DecodeError("truncated header")
    if data[0] in RETIRED_VERSIONS:
        raise DecodeError(
            f"protocol version {data[0]} is no longer supported ({RETIRED_VERSIONS[data[0]]}); "
            f"upgrade the peer to a qsgw speaking version {PROTOCOL_VERSION}"
        )
    if data[0] != PROTOCOL_VERSION:
        raise DecodeError(
            f"unsupported protocol version {data[0]} (this gateway speaks {PROTOCOL_VERSION})"
        )
    try:
        return MessageType(data[1])
    except ValueError:
        raise DecodeError(f"unknown message type {data[1]}") from None


def decode(data: bytes) -> Message:
    """Parse one message; raises only DecodeError."""
    try:
        return _decode(bytes(data))
    except DecodeError:
        raise
    except Exception as exc:  # defence in depth: nothing else may escape
        raise DecodeError(f"malformed message ({type(exc).__name__})") from None


def _decode(data: bytes) -> Message:
    msg_type = peek_type(data)
    r = _Reader(data)
    r.pos = 2
    initiator_id = r.text("initiator_id", MAX_ID_LEN, _ID_RE)
    responder_id = r.text("responder_id", MAX_ID_LEN, _ID_RE)
    epoch = r.u64("epoch")
    if msg_type in (MessageType.FINISH, MessageType.DONE):
        mac_offset = r.pos
        mac = r.take(MAC_SIZE, "mac")
        r.end()
        return Confirm(msg_type, initiator_id, responder_id, epoch, mac, data, mac_offset)
    timestamp_ms = r.u64("timestamp")
    nonce = r.take(NONCE_SIZE, "nonce")
    if msg_type == MessageType.INIT:
        suite = r.text("suite", MAX_SUITE_LEN, _SUITE_RE)
        qkd_flag = r.u8("qkd_used")
        if qkd_flag > 1:
            raise DecodeError("qkd_used must be 0 or 1")
        n_ids = r.u8("key_ID count")
        if n_ids > MAX_KEY_IDS:
            raise DecodeError(f"more than {MAX_KEY_IDS} key_IDs")
        key_ids = tuple(r.text("key_ID", MAX_KEY_ID_LEN, _KEY_ID_RE) for _ in range(n_ids))
        if (qkd_flag == 1) != (n_ids > 0):
            raise DecodeError("qkd_used disagrees with the key_ID count")
        if len(set(key_ids)) != len(key_ids):
            raise DecodeError("duplicate key_ID")
        public_keys = _read_components(r, "public key")
        signed_len = r.pos
        sig_ed, sig_ml = _read_signatures(r)
        return Init(
            initiator_id, responder_id, epoch, timestamp_ms, nonce, suite, qkd_flag == 1,
            key_ids, public_keys, sig_ed, sig_ml, data, signed_len,
        )
    outcome_raw = r.u8("qkd_outcome")
    try:
        outcome = QkdOutcome(outcome_raw)
    except ValueError:
        raise DecodeError(f"unknown qkd_outcome {outcome_raw}") from None
    ciphertexts = _read_components(r, "ciphertext")
    kdf_len = r.pos
    mac = r.take(MAC_SIZE, "mac")
    signed_len = r.pos
    sig_ed, sig_ml = _read_signatures(r)
    return Resp(
        initiator_id, responder_id, epoch, timestamp_ms, nonce, outcome, ciphertexts, mac,
        sig_ed, sig_ml, data, kdf_len, signed_len,
    )


def _read_components(r: _Reader, what: str) -> tuple[bytes, ...]:
    n = r.u8(f"{what} count")
    if not 1 <= n <= MAX_COMPONENTS:
        raise DecodeError(f"{what} count {n} outside 1..{MAX_COMPONENTS}")
    return tuple(r.blob(what) for _ in range(n))


def _read_signatures(r: _Reader) -> tuple[bytes, bytes]:
    sig_ed = r.blob("Ed25519 signature", MAX_SIGNATURE_LEN)
    sig_ml = r.blob("ML-DSA signature", MAX_SIGNATURE_LEN)
    r.end()
    return sig_ed, sig_ml
