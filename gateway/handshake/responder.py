"""The responder's state machine (ETSI 014 slave SAE). Pure: no I/O, no clock.

INIT -> [CommitEpoch, FetchQkdKeysById] -> on_qkd_keys -> [SendMessage(RESP)]
FINISH -> [InstallKey(peer_confirmed=False)]; on_installed -> [SendMessage(DONE)].
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence

from gateway.crypto.combiner import EpochKeys, check_mac, combine, confirmation_mac
from gateway.crypto.memory import wipe
from gateway.crypto.providers import ProviderError
from gateway.handshake import codec, transcript
from gateway.handshake.actions import (
    Action,
    CommitEpoch,
    FetchQkdKeysById,
    HandshakeFailed,
    InstallKey,
    QkdKeyLike,
    QkdPolicy,
    SendMessage,
)
from gateway.handshake.errors import FailureReason
from gateway.handshake.messages import NONCE_SIZE, Confirm, Init, MessageType, QkdOutcome
from gateway.handshake.params import HandshakeParams, MachineBase, concat_qkd_keys, static_key_hash


class ResponderState(enum.Enum):
    AWAIT_INIT = "await_init"
    FETCHING_QKD = "fetching_qkd"
    AWAIT_FINISH = "await_finish"
    INSTALLING = "installing"
    DONE = "done"
    FAILED = "failed"


class ResponderHandshake(MachineBase):
    """One epoch's handshake as responder.

    ``last_epoch`` is the journal's last epoch for this peer: an INIT must be
    above it. ``now`` is wall-clock seconds (time.time()).
    """

    def __init__(self, params: HandshakeParams, last_epoch: int, now: float) -> None:
        super().__init__(params, now)
        self.last_epoch = last_epoch
        self.state = ResponderState.AWAIT_INIT
        self.epoch = 0
        self._init: Init | None = None
        self._key_ids: tuple[str, ...] = ()
        self._keys: EpochKeys | None = None
        self._th2 = b""
        self._th3 = b""
        self._resp_wire = b""
        self._finish_wire = b""
        self._sources: tuple[str, ...] = ()
        self._degraded = False

    # --- inputs -------------------------------------------------------------

    def on_message(self, data: bytes, now: float) -> list[Action]:
        msg = self._receive(data, now)
        if isinstance(msg, list):
            return msg
        if msg.initiator_id != self.params.peer_id or msg.responder_id != self.params.local_id:
            return list(self._reject(FailureReason.WRONG_PEER, "message names other gateways"))
        if isinstance(msg, Init):
            if self.state is ResponderState.AWAIT_INIT:
                return self._on_init(msg, now)
            if msg.epoch <= self.epoch:
                return list(self._reject(FailureReason.REPLAY, "INIT for an epoch already begun"))
            return list(self._reject(FailureReason.UNEXPECTED_MESSAGE, "INIT during a handshake"))
        if msg.epoch != self.epoch:
            reason = (
                FailureReason.REPLAY if msg.epoch < self.epoch else FailureReason.UNEXPECTED_MESSAGE
            )
            return list(self._reject(reason, f"epoch {msg.epoch}, expected {self.epoch}"))
        if isinstance(msg, Confirm) and msg.type is MessageType.FINISH:
            if self.state is ResponderState.AWAIT_FINISH:
                return self._on_finish(msg)
            if data == self._finish_wire:
                return list(self._reject(FailureReason.REPLAY, "FINISH seen before"))
        return list(self._reject(FailureReason.UNEXPECTED_MESSAGE, "message out of order"))

    def on_qkd_keys(self, keys: Sequence[QkdKeyLike], now: float) -> list[Action]:
        if self.state is not ResponderState.FETCHING_QKD:
            return []
        if timeout := self._check_timeout(now):
            return list(timeout)
        qkd, reason, detail = concat_qkd_keys(keys, self._key_ids)
        if reason is not None:
            return list(self._fail(reason, detail))
        return self._respond(qkd, QkdOutcome.OK, now)

    def on_qkd_unavailable(self, reason: str, now: float) -> list[Action]:
        if self.state is not ResponderState.FETCHING_QKD:
            return []
        if self.params.qkd_policy is QkdPolicy.REQUIRED:
            return list(self._fail(FailureReason.QKD_UNAVAILABLE, f"policy required: {reason}"))
        self._key_ids = ()
        return self._respond(None, QkdOutcome.UNAVAILABLE, now)

    def on_installed(self, now: float) -> list[Action]:
        """The daemon installed the key: tell the initiator (DONE)."""
        if self.state is not ResponderState.INSTALLING or self._keys is None:
            return []
        p = self.params
        header = codec.encode_confirm_header(MessageType.DONE, p.peer_id, p.local_id, self.epoch)
        done = header + confirmation_mac(
            self._keys.responder_confirm, transcript.MAC_LABEL_DONE, self._th3 + header
        )
        self._keys.wipe()
        self._keys = None
        self.state = ResponderState.DONE
        self.finished = True
        return [SendMessage(done, MessageType.DONE)]

    # --- steps --------------------------------------------------------------

    def _on_init(self, init: Init, now: float) -> list[Action]:
        p = self.params
        if not self._verify(
            init.signed_part, init.sig_ed25519, init.sig_mldsa, transcript.SIG_CONTEXT_INIT
        ):
            return list(self._reject(FailureReason.BAD_SIGNATURE, "INIT signature invalid"))
        if init.epoch <= self.last_epoch:
            return list(self._reject(
                FailureReason.REPLAY, f"epoch {init.epoch} not above {self.last_epoch}"
            ))
        if not self._fresh(init.timestamp_ms, now):
            return list(self._reject(FailureReason.STALE, "INIT timestamp outside the window"))
        self.epoch = init.epoch
        self._init = init
        if init.suite != p.suite.name:
            return list(self._fail(
                FailureReason.SUITE_MISMATCH, f"peer offers {init.suite}, configured {p.suite.name}"
            ))
        if len(init.public_keys) != len(p.suite.kems):
            return list(self._fail(FailureReason.BAD_KEY_SHARE, "wrong number of public keys"))
        use_qkd = init.qkd_used and p.qkd_policy is not QkdPolicy.OFF
        if p.qkd_policy is QkdPolicy.REQUIRED and not init.qkd_used:
            return list(self._fail(FailureReason.QKD_UNAVAILABLE, "required, peer sent none"))
        if use_qkd and len(init.key_ids) != p.qkd_key_count:
            return list(self._fail(FailureReason.KEY_ID_MISMATCH, "wrong number of key_IDs"))
        if not use_qkd:
            return [CommitEpoch(p.peer_id, init.epoch, ()),
                    *self._respond(None, QkdOutcome.NOT_USED, now)]
        self._key_ids = init.key_ids
        self.state = ResponderState.FETCHING_QKD
        return [CommitEpoch(p.peer_id, init.epoch, init.key_ids), FetchQkdKeysById(init.key_ids)]

    def _respond(self, qkd: bytearray | None, outcome: QkdOutcome, now: float) -> list[Action]:
        p = self.params
        init = self._init
        assert init is not None
        secrets: list[tuple[str, bytearray]] = []
        cts: list[bytes] = []
        try:
            for kem, slot in zip(p.suite.kems, init.public_keys, strict=True):
                if p.suite.is_static(kem):
                    public = p.peer_static_kem_keys[kem.name]
                    if slot != static_key_hash(public):
                        return list(self._fail(
                            FailureReason.BAD_KEY_SHARE, f"{kem.name} static key not pinned one"
                        ))
                else:
                    public = slot
                shared, ct = kem.encapsulate(public)
                secrets.append((kem.name, shared))
                cts.append(ct)
            kdf = codec.encode_resp_kdf(
                p.peer_id, p.local_id, init.epoch, int(now * 1000), os.urandom(NONCE_SIZE),
                outcome, tuple(cts),
            )
            th1 = transcript.th1(init.wire, kdf)
            keys = combine(
                qkd, secrets, suite=p.suite.name, transcript_hash=th1, ma=init.wire, mb=kdf
            )
        except ProviderError as exc:
            return list(self._fail(FailureReason.BAD_KEY_SHARE, str(exc)))
        finally:
            for _, s in secrets:
                wipe(s)
            wipe(qkd)
        mac = confirmation_mac(keys.responder_confirm, transcript.MAC_LABEL_RESP, th1)
        sig_ed, sig_ml = p.identity.sign(
            transcript.resp_signed_message(th1, mac), transcript.SIG_CONTEXT_RESP
        )
        self._resp_wire = codec.append_signatures(kdf + mac, sig_ed, sig_ml)
        self._th2 = transcript.th2(th1, self._resp_wire)
        self._keys = keys
        self._sources = (("QKD",) if qkd is not None else ()) + p.suite.kem_names
        self._degraded = qkd is None and p.qkd_policy is not QkdPolicy.OFF
        self.state = ResponderState.AWAIT_FINISH
        return [SendMessage(self._resp_wire, MessageType.RESP)]

    def _on_finish(self, finish: Confirm) -> list[Action]:
        assert self._keys is not None
        if not check_mac(
            self._keys.initiator_confirm, transcript.MAC_LABEL_FINISH, self._th2 + finish.header,
            finish.mac,
        ):
            return list(self._reject(FailureReason.BAD_MAC, "FINISH MAC invalid"))
        self._finish_wire = finish.wire
        self._th3 = transcript.th3(self._th2, finish.wire)
        # The tunnel key goes to the caller (who wipes it); the confirm key stays for DONE.
        key = bytearray(self._keys.tunnel_key)
        wipe(self._keys.tunnel_key)
        self.state = ResponderState.INSTALLING
        return [InstallKey(
            epoch=self.epoch, key=key, sources=self._sources, key_ids=self._key_ids,
            suite=self.params.suite.name, degraded=self._degraded, peer_confirmed=False,
        )]

    def _check_timeout(self, now: float) -> list[HandshakeFailed]:
        # Installing is the daemon's step; the deadline covers waiting for the peer.
        if self.state is ResponderState.INSTALLING:
            return []
        return super()._check_timeout(now)

    def _fail(self, reason: FailureReason, detail: str = "") -> list[HandshakeFailed]:
        self.state = ResponderState.FAILED
        return super()._fail(reason, detail)

    def _wipe(self) -> None:
        if self._keys is not None:
            self._keys.wipe()
            self._keys = None
