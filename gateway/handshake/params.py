"""Per-peer inputs to a handshake, and the checks both roles share."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.crypto.combiner import QKD_KEY_MAX, QKD_KEY_MIN
from gateway.crypto.memory import wipe
from gateway.crypto.providers import KemKeyPair
from gateway.crypto.suites import Suite
from gateway.handshake import codec
from gateway.handshake.actions import Action, HandshakeFailed, QkdKeyLike, QkdPolicy, Rejected
from gateway.handshake.errors import DecodeError, FailureReason
from gateway.handshake.messages import Message
from gateway.identity import LocalIdentity, PublicIdentity

MAX_QKD_KEYS = 16


@dataclass(frozen=True)
class HandshakeParams:
    """What one gateway knows about one peer.

    ``static_kem_keys``: this gateway's static KEM key pairs by algorithm name
    (Classic McEliece, made at provisioning); ``peer_static_kem_keys``: the
    peer's pinned static public keys.
    """

    local_id: str
    peer_id: str
    identity: LocalIdentity
    peer_identity: PublicIdentity
    suite: Suite
    qkd_policy: QkdPolicy = QkdPolicy.PREFERRED
    qkd_key_count: int = 1
    timestamp_window_s: float = 60.0
    timeout_s: float = 30.0
    static_kem_keys: Mapping[str, KemKeyPair] = field(default_factory=dict, repr=False)
    peer_static_kem_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.qkd_key_count <= MAX_QKD_KEYS:
            raise ValueError(f"qkd_key_count must be 1..{MAX_QKD_KEYS}")
        if self.timestamp_window_s <= 0 or self.timeout_s <= 0:
            raise ValueError("timestamp_window_s and timeout_s must be positive")
        for kem in self.suite.kems:
            if self.suite.is_static(kem) and (
                kem.name not in self.static_kem_keys or kem.name not in self.peer_static_kem_keys
            ):
                raise ValueError(f"suite {self.suite.name} needs static {kem.name} keys")


def static_key_hash(public: bytes) -> bytes:
    """What INIT carries in place of a static public key."""
    return hashlib.sha256(b"qsgw/2 static kem" + public).digest()


class MachineBase:
    """Counters, deadline and the signature check shared by both roles."""

    def __init__(self, params: HandshakeParams, now: float) -> None:
        self.params = params
        self.counters: collections.Counter[FailureReason] = collections.Counter()
        self.deadline = now + params.timeout_s
        self.finished = False
        self.failure: FailureReason | None = None

    def _reject(self, reason: FailureReason, detail: str = "") -> list[Rejected]:
        self.counters[reason] += 1
        return [Rejected(reason, detail)]

    def _fail(self, reason: FailureReason, detail: str = "") -> list[HandshakeFailed]:
        self.counters[reason] += 1
        self.finished = True
        self.failure = reason
        self._wipe()
        return [HandshakeFailed(reason, detail)]

    def _wipe(self) -> None:
        """Drop secrets; overridden by the roles."""

    def _verify(self, message: bytes, sig_ed: bytes, sig_ml: bytes, context: bytes) -> bool:
        return self.params.peer_identity.verify(message, sig_ed, sig_ml, context)

    def _fresh(self, timestamp_ms: int, now: float) -> bool:
        return abs(timestamp_ms / 1000.0 - now) <= self.params.timestamp_window_s

    def _check_timeout(self, now: float) -> list[HandshakeFailed]:
        if not self.finished and now >= self.deadline:
            return self._fail(FailureReason.TIMEOUT, "no answer before the deadline")
        return []

    def on_tick(self, now: float) -> list[Action]:
        return list(self._check_timeout(now))

    def _receive(self, data: bytes, now: float) -> Message | list[Action]:
        """What both roles do first with a frame: the deadline, then decoding.
        Returns the message, or the actions to return instead of handling it."""
        if timeout := self._check_timeout(now):
            return list(timeout)
        try:
            return codec.decode(data)
        except DecodeError as exc:
            return list(self._reject(FailureReason.DECODE_ERROR, str(exc)))

    def abort(self, reason: FailureReason, now: float) -> list[HandshakeFailed]:
        """The daemon ends the handshake (journal refused a key_ID, peer went away...)."""
        if self.finished:
            return []
        return self._fail(reason, "aborted by the caller")


def concat_qkd_keys(
    keys: Sequence[QkdKeyLike], key_ids: Sequence[str]
) -> tuple[bytearray | None, FailureReason | None, str]:
    """Concatenate delivered keys in ``key_ids`` order, checking IDs and lengths."""
    by_id: dict[str, bytes] = {}
    for k in keys:
        if k.key_id in by_id:
            return None, FailureReason.KEY_ID_MISMATCH, "a key_ID was delivered twice"
        by_id[k.key_id] = k.key
    if set(by_id) != set(key_ids) or len(by_id) != len(key_ids):
        return None, FailureReason.KEY_ID_MISMATCH, "delivered key_IDs differ from those asked"
    out = bytearray()
    for key_id in key_ids:
        key = by_id[key_id]
        if not QKD_KEY_MIN <= len(key) <= QKD_KEY_MAX:
            wipe(out)
            return None, FailureReason.BAD_QKD_KEY, (
                f"QKD key {key_id} is {len(key)} bytes; allowed {QKD_KEY_MIN}..{QKD_KEY_MAX}"
            )
        out += key
    return out, None, ""
