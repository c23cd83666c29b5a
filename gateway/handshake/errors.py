"""Typed failures of the key agreement."""

from __future__ import annotations

import enum


class DecodeError(ValueError):
    """A message is malformed; the only exception that escapes decoding."""


class FailureReason(enum.Enum):
    """Why a message was refused or a handshake failed (for metrics and logs)."""

    DECODE_ERROR = "decode_error"
    WRONG_PEER = "wrong_peer"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    STALE = "stale"
    UNEXPECTED_MESSAGE = "unexpected_message"
    SUITE_MISMATCH = "suite_mismatch"
    KEY_ID_MISMATCH = "key_id_mismatch"
    CONFIRMATION_FAILED = "confirmation_failed"
    BAD_MAC = "bad_mac"
    QKD_UNAVAILABLE = "qkd_unavailable"
    BAD_QKD_KEY = "bad_qkd_key"
    BAD_KEY_SHARE = "bad_key_share"
    KEY_REUSE = "key_reuse"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
