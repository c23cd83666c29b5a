"""The initiator's state machine (ETSI 014 master SAE). Pure: no I/O, no clock.

start -> FetchQkdKeys -> on_qkd_keys -> [CommitEpoch, SendMessage(INIT)]
RESP -> [SendMessage(FINISH)]; DONE -> [InstallKey(peer_confirmed=True)].
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence

from gateway.crypto.combiner import EpochKeys, check_mac, combine, confirmation_mac
from gateway.crypto.memory import wipe
from gateway.crypto.providers import KemKeyPair, ProviderError
from gateway.handshake import codec, transcript
from gateway.handshake.actions import (
    Action,
    CommitEpoch,
    FetchQkdKeys,
    HandshakeFailed,
    InstallKey,
    QkdKeyLike,
    QkdPolicy,
    SendMessage,
)
from gateway.handshake.errors import FailureReason
from gateway.handshake.messages import (
    NONCE_SIZE,
    Confirm,
    Init,
    MessageType,
    QkdOutcome,
    Resp,
)
from gateway.handshake.params import HandshakeParams, MachineBase, concat_qkd_keys, static_key_hash


class InitiatorState(enum.Enum):
    NEW = "new"
    FETCHING_QKD = "fetching_qkd"
    AWAIT_RESP = "await_resp"
    AWAIT_DONE = "await_done"
    DONE = "done"
    FAILED = "failed"


class InitiatorHandshake(MachineBase):
    """One epoch's handshake as initiator. ``now`` is wall-clock seconds (time.time())."""

    def __init__(self, params: HandshakeParams, epoch: int, now: float) -> None:
        super().__init__(params, now)
        if epoch < 1:
            raise ValueError("epoch must be >= 1")
        self.epoch = epoch
        self.state = InitiatorState.NEW
        self._pairs: list[KemKeyPair] = []
        self._qkd: bytearray | None = None
        self._key_ids: tuple[str, ...] = ()
        self._init_wire = b""
        self._resp_wire = b""
        self._th3 = b""
        self._keys: EpochKeys | None = None
        self._sources: tuple[str, ...] = ()
        self._degraded = False

    # --- inputs -------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self.state is not InitiatorState.NEW:
            return []
        if self.params.qkd_policy is QkdPolicy.OFF:
            return self._send_init(now)
        self.state = InitiatorState.FETCHING_QKD
        return [FetchQkdKeys(self.params.qkd_key_count)]

    def on_qkd_keys(self, keys: Sequence[QkdKeyLike], now: float) -> list[Action]:
        if self.state is not InitiatorState.FETCHING_QKD:
            return []
        if timeout := self._check_timeout(now):
            return list(timeout)
        key_ids = tuple(k.key_id for k in keys)
        if len(key_ids) != self.params.qkd_key_count:
            return list(self._fail(FailureReason.KEY_ID_MISMATCH, "wrong number of QKD keys"))
        qkd, reason, detail = concat_qkd_keys(keys, key_ids)
        if reason is not None:
            return list(self._fail(reason, detail))
        self._qkd, self._key_ids = qkd, key_ids
        return self._send_init(now)

    def on_qkd_unavailable(self, reason: str, now: float) -> list[Action]:
        if self.state is not InitiatorState.FETCHING_QKD:
            return []
        if self.params.qkd_policy is QkdPolicy.REQUIRED:
            return list(self._fail(FailureReason.QKD_UNAVAILABLE, f"policy required: {reason}"))
        return self._send_init(now)

    def on_message(self, data: bytes, now: float) -> list[Action]:
        msg = self._receive(data, now)
        if isinstance(msg, list):
            return msg
        if isinstance(msg, Init):
            return list(self._reject(FailureReason.UNEXPECTED_MESSAGE, "INIT sent to initiator"))
        if msg.initiator_id != self.params.local_id or msg.responder_id != self.params.peer_id:
            return list(self._reject(FailureReason.WRONG_PEER, "message names other gateways"))
        if msg.epoch != self.epoch:
            reason = (
                FailureReason.REPLAY if msg.epoch < self.epoch else FailureReason.UNEXPECTED_MESSAGE
            )
            return list(self._reject(reason, f"epoch {msg.epoch}, expected {self.epoch}"))
        if isinstance(msg, Resp):
            if self.state is InitiatorState.AWAIT_RESP:
                return self._on_resp(msg, now)
            if data == self._resp_wire:
                return list(self._reject(FailureReason.REPLAY, "RESP seen before"))
            return list(self._reject(FailureReason.UNEXPECTED_MESSAGE, "RESP out of order"))
        if msg.type is MessageType.DONE:
            if self.state is InitiatorState.AWAIT_DONE:
                return self._on_done(msg)
            if self.state is InitiatorState.DONE:
                return list(self._reject(FailureReason.REPLAY, "DONE seen before"))
        return list(self._reject(FailureReason.UNEXPECTED_MESSAGE, f"{msg.type.name} unexpected"))

    # --- steps --------------------------------------------------------------

    def _send_init(self, now: float) -> list[Action]:
        p = self.params
        slots: list[bytes] = []
        for kem in p.suite.kems:
            if p.suite.is_static(kem):
                pair = p.static_kem_keys[kem.name]
                slots.append(static_key_hash(pair.public))
            else:
                pair = kem.generate()
                slots.append(pair.public)
            self._pairs.append(pair)
        signed = codec.encode_init_signed(
            p.local_id, p.peer_id, self.epoch, int(now * 1000), os.urandom(NONCE_SIZE),
            p.suite.name, self._qkd is not None, self._key_ids, tuple(slots),
        )
        sig_ed, sig_ml = p.identity.sign(signed, transcript.SIG_CONTEXT_INIT)
        self._init_wire = codec.append_signatures(signed, sig_ed, sig_ml)
        self.state = InitiatorState.AWAIT_RESP
        return [
            CommitEpoch(p.peer_id, self.epoch, self._key_ids),
            SendMessage(self._init_wire, MessageType.INIT),
        ]

    def _on_resp(self, resp: Resp, now: float) -> list[Action]:
        p = self.params
        th1 = transcript.th1(self._init_wire, resp.kdf_part)
        signed = transcript.resp_signed_message(th1, resp.mac)
        if not self._verify(signed, resp.sig_ed25519, resp.sig_mldsa, transcript.SIG_CONTEXT_RESP):
            return list(self._reject(FailureReason.BAD_SIGNATURE, "RESP signature invalid"))
        if not self._fresh(resp.timestamp_ms, now):
            return list(self._reject(FailureReason.STALE, "RESP timestamp outside the window"))
        if len(resp.ciphertexts) != len(p.suite.kems):
            return list(self._fail(FailureReason.BAD_KEY_SHARE, "wrong number of ciphertexts"))
        qkd = self._qkd
        if self._qkd is None:
            if resp.qkd_outcome is not QkdOutcome.NOT_USED:
                return list(self._fail(FailureReason.KEY_ID_MISMATCH, "QKD outcome, no key_IDs"))
        elif resp.qkd_outcome is not QkdOutcome.OK:
            if p.qkd_policy is QkdPolicy.REQUIRED:
                return list(self._fail(FailureReason.QKD_UNAVAILABLE, "peer lacks the keys"))
            qkd = None
        secrets: list[tuple[str, bytearray]] = []
        try:
            for kem, pair, ct in zip(p.suite.kems, self._pairs, resp.ciphertexts, strict=True):
                secrets.append((kem.name, kem.decapsulate(pair, ct)))
            keys = combine(
                qkd, secrets, suite=p.suite.name, transcript_hash=th1,
                ma=self._init_wire, mb=resp.kdf_part,
            )
        except ProviderError as exc:
            return list(self._fail(FailureReason.BAD_KEY_SHARE, str(exc)))
        finally:
            for _, s in secrets:
                wipe(s)
        self._pairs.clear()
        if not check_mac(keys.responder_confirm, transcript.MAC_LABEL_RESP, th1, resp.mac):
            keys.wipe()
            return list(self._fail(
                FailureReason.CONFIRMATION_FAILED, "RESP confirmation failed (QKD key mismatch?)"
            ))
        self._keys = keys
        self._sources = (("QKD",) if qkd is not None else ()) + p.suite.kem_names
        self._degraded = qkd is None and p.qkd_policy is not QkdPolicy.OFF
        if qkd is None:
            self._key_ids = ()
        wipe(self._qkd)
        self._qkd = None
        self._resp_wire = resp.wire
        th2 = transcript.th2(th1, resp.wire)
        header = codec.encode_confirm_header(MessageType.FINISH, p.local_id, p.peer_id, self.epoch)
        finish = header + confirmation_mac(
            keys.initiator_confirm, transcript.MAC_LABEL_FINISH, th2 + header
        )
        self._th3 = transcript.th3(th2, finish)
        self.state = InitiatorState.AWAIT_DONE
        return [SendMessage(finish, MessageType.FINISH)]

    def _on_done(self, done: Confirm) -> list[Action]:
        assert self._keys is not None
        if not check_mac(
            self._keys.responder_confirm, transcript.MAC_LABEL_DONE, self._th3 + done.header,
            done.mac,
        ):
            return list(self._reject(FailureReason.BAD_MAC, "DONE MAC invalid"))
        keys, self._keys = self._keys, None
        wipe(keys.initiator_confirm)
        wipe(keys.responder_confirm)
        self.state = InitiatorState.DONE
        self.finished = True
        return [InstallKey(
            epoch=self.epoch, key=keys.tunnel_key, sources=self._sources, key_ids=self._key_ids,
            suite=self.params.suite.name, degraded=self._degraded, peer_confirmed=True,
        )]

    def _fail(self, reason: FailureReason, detail: str = "") -> list[HandshakeFailed]:
        self.state = InitiatorState.FAILED
        return super()._fail(reason, detail)

    def _wipe(self) -> None:
        wipe(self._qkd)
        self._qkd = None
        self._pairs.clear()
        if self._keys is not None:
            self._keys.wipe()
            self._keys = None
