"""The key agreement end to end in memory: what each side installs, and what it refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.handshake import (
    FailureReason,
    HandshakeFailed,
    HandshakeParams,
    InitiatorHandshake,
    InitiatorState,
    InstallKey,
    QkdKey,
    QkdPolicy,
    Rejected,
    ResponderHandshake,
    ResponderState,
)
from gateway.identity import LocalIdentity
from tests.crypto.conftest import NOW, Kme, drive, make_params
from tests.liboqs_gate import require_liboqs

Ids = tuple[LocalIdentity, LocalIdentity]


def _reasons(actions: list[object]) -> list[FailureReason]:
    return [a.reason for a in actions if isinstance(a, (Rejected, HandshakeFailed))]


def _assert_same_key(run: object) -> None:
    i, r = run.installed_i, run.installed_r  # type: ignore[attr-defined]
    assert i is not None and r is not None
    assert bytes(i.key) == bytes(r.key) and len(i.key) == 32
    assert i.peer_confirmed and not r.peer_confirmed


@pytest.mark.parametrize("suite", ["default", "mlkem1024"])
def test_both_sides_install_the_same_key(identities: Ids, suite: str) -> None:
    ip, rp = make_params(identities, suite=suite)
    run, ini, res = drive(ip, rp)
    _assert_same_key(run)
    assert run.installed_i is not None
    assert run.installed_i.sources == ("QKD", "ML-KEM-768" if suite == "default" else "ML-KEM-1024",
                                       "X25519")
    assert not run.installed_i.degraded and run.installed_i.suite == suite
    assert len(run.installed_i.key_ids) == 1
    assert ini.state is InitiatorState.DONE and res.state is ResponderState.DONE
    # Both sides journal the same epoch and key_IDs before use.
    assert [(c.epoch, c.key_ids) for c in run.commits] == [(1, run.installed_i.key_ids)] * 2


def test_each_handshake_gives_a_fresh_key(params: tuple[HandshakeParams, HandshakeParams]) -> None:
    run1, _, _ = drive(*params, epoch=1)
    run2, _, _ = drive(*params, epoch=2, last_epoch=1)
    assert run1.installed_i is not None and run2.installed_i is not None
    assert bytes(run1.installed_i.key) != bytes(run2.installed_i.key)


def test_several_qkd_keys_of_any_allowed_length(identities: Ids) -> None:
    for size in (16, 64):
        ip, rp = make_params(identities, qkd_key_count=3)
        run, _, _ = drive(ip, rp, kme=Kme(size=size))
        _assert_same_key(run)
        assert run.installed_i is not None and len(run.installed_i.key_ids) == 3


def test_required_without_qkd_fails_closed(identities: Ids) -> None:
    ip, rp = make_params(identities, qkd_policy=QkdPolicy.REQUIRED)
    run, _ini, _ = drive(ip, rp, initiator_kme_up=False)
    assert _reasons(run.actions) == [FailureReason.QKD_UNAVAILABLE]
    assert run.installed_i is None and run.installed_r is None and run.init == b""
    # The responder's KME failing is also fatal under `required`.
    run, _, res = drive(ip, rp, responder_kme_up=False)
    assert FailureReason.QKD_UNAVAILABLE in _reasons(run.actions)
    assert run.installed_r is None and res.state is ResponderState.FAILED


def test_preferred_goes_on_degraded_without_qkd(identities: Ids) -> None:
    ip, rp = make_params(identities, qkd_policy=QkdPolicy.PREFERRED)
    for kw in ({"initiator_kme_up": False}, {"responder_kme_up": False}):
        run, _, _ = drive(ip, rp, **kw)
        _assert_same_key(run)
        for inst in (run.installed_i, run.installed_r):
            assert inst is not None and inst.degraded
            assert inst.sources == ("ML-KEM-768", "X25519") and inst.key_ids == ()


def test_off_never_asks_for_qkd(identities: Ids) -> None:
    ip, rp = make_params(identities, qkd_policy=QkdPolicy.OFF)
    ini = InitiatorHandshake(ip, 1, NOW)
    acts = ini.start(NOW)
    assert [type(a).__name__ for a in acts] == ["CommitEpoch", "SendMessage"]
    run, _, _ = drive(ip, rp)
    _assert_same_key(run)
    assert run.installed_i is not None and not run.installed_i.degraded


def test_missing_qkd_changes_the_key_not_zero_filled(identities: Ids) -> None:
    # Same everything except QKD: if absence were zeros, a 32-byte zero QKD key would match.
    ip, rp = make_params(identities)
    run, _, _ = drive(ip, rp, kme=Kme(size=32), initiator_kme_up=False)
    assert run.installed_i is not None and run.installed_i.sources[0] != "QKD"


def test_wrong_qkd_key_is_caught_before_install(params: tuple[HandshakeParams, ...]) -> None:
    class LyingKme(Kme):
        def dec(self, ids: tuple[str, ...]) -> list[QkdKey]:
            return [QkdKey(i, bytes(32)) for i in ids]

    run, ini, _ = drive(*params, kme=LyingKme())
    assert _reasons(run.actions) == [FailureReason.CONFIRMATION_FAILED]
    assert run.installed_i is None and run.installed_r is None and run.finish == b""
    assert ini.counters[FailureReason.CONFIRMATION_FAILED] == 1


def test_kme_returning_other_key_ids_is_refused(params: tuple[HandshakeParams, ...]) -> None:
    class SwappingKme(Kme):
        def dec(self, ids: tuple[str, ...]) -> list[QkdKey]:
            return [QkdKey("other-" + i, self.keys[i]) for i in ids]

    run, _, _res = drive(*params, kme=SwappingKme())
    assert _reasons(run.actions) == [FailureReason.KEY_ID_MISMATCH]
    assert run.installed_r is None and run.resp == b""


def test_swapped_key_id_in_init_is_refused(params: tuple[HandshakeParams, ...]) -> None:
    def swap(kind: str, data: bytes) -> bytes:
        if kind != "init":
            return data
        first = next(iter(kme.keys))
        return data.replace(first.encode(), ("f" * len(first)).encode())

    kme = Kme()
    run, _, res = drive(*params, kme=kme, tamper=swap)
    assert _reasons(run.actions) == [FailureReason.BAD_SIGNATURE]
    assert run.installed_r is None and res.state is ResponderState.AWAIT_INIT


def test_suite_mismatch_is_refused(identities: Ids) -> None:
    ip, _ = make_params(identities, suite="default")
    _, rp = make_params(identities, suite="mlkem1024")
    run, _, res = drive(ip, rp)
    assert _reasons(run.actions) == [FailureReason.SUITE_MISMATCH]
    assert run.installed_r is None and res.state is ResponderState.FAILED


def test_wrong_peer_and_one_key_signatures_are_refused(identities: Ids) -> None:
    a, b = identities
    mallory = LocalIdentity.generate()
    ip, rp = make_params(identities)
    # INIT from a gateway the responder does not expect.
    run, _, _ = drive(replace(ip, local_id="gw-m"), rp)
    assert _reasons(run.actions) == [FailureReason.WRONG_PEER]
    # Signed by Mallory's Ed25519 key with A's ML-DSA key, and the other way round.
    for ident in (
        LocalIdentity(mallory.ed25519_private, a.mldsa65_private),
        LocalIdentity(a.ed25519_private, mallory.mldsa65_private),
    ):
        run, _, res = drive(replace(ip, identity=ident), rp)
        assert _reasons(run.actions) == [FailureReason.BAD_SIGNATURE]
        assert run.installed_r is None and res.state is ResponderState.AWAIT_INIT
    # RESP signed with one of the responder's keys only.
    run, _, _ = drive(ip, replace(rp, identity=LocalIdentity(b.ed25519_private,
                                                              mallory.mldsa65_private)))
    assert _reasons(run.actions) == [FailureReason.BAD_SIGNATURE]
    assert run.installed_i is None and run.installed_r is None


def test_replay_of_every_message_is_refused(params: tuple[HandshakeParams, ...]) -> None:
    ip, rp = params
    run, ini, res = drive(ip, rp)
    _assert_same_key(run)
    # INIT replayed to a fresh responder that journalled epoch 1.
    fresh = ResponderHandshake(rp, last_epoch=1, now=NOW + 1)
    assert _reasons(fresh.on_message(run.init, NOW + 1)) == [FailureReason.REPLAY]
    assert _reasons(res.on_message(run.init, NOW + 1)) == [FailureReason.REPLAY]
    assert _reasons(ini.on_message(run.resp, NOW + 1)) == [FailureReason.REPLAY]
    assert _reasons(res.on_message(run.finish, NOW + 1)) == [FailureReason.REPLAY]
    assert _reasons(ini.on_message(run.done, NOW + 1)) == [FailureReason.REPLAY]
    # Messages of epoch 1 replayed into the epoch-2 handshake.
    ini2 = InitiatorHandshake(ip, 2, NOW + 2)
    ini2.start(NOW + 2)
    assert _reasons(ini2.on_message(run.resp, NOW + 2)) == [FailureReason.REPLAY]
    assert ini2.counters[FailureReason.REPLAY] == 1


def test_stale_init_is_refused(params: tuple[HandshakeParams, ...]) -> None:
    ip, rp = params
    run, _, _ = drive(ip, rp)
    late = ResponderHandshake(rp, last_epoch=0, now=NOW + 61)
    assert _reasons(late.on_message(run.init, NOW + 61)) == [FailureReason.STALE]
    assert late.state is ResponderState.AWAIT_INIT


def test_timeout_fails_without_install(params: tuple[HandshakeParams, ...]) -> None:
    ini = InitiatorHandshake(params[0], 1, NOW)
    ini.start(NOW)
    assert ini.on_tick(NOW + 29) == []
    assert _reasons(ini.on_tick(NOW + 31)) == [FailureReason.TIMEOUT]
    assert ini.state is InitiatorState.FAILED


def test_reordered_messages_are_refused(params: tuple[HandshakeParams, ...]) -> None:
    ip, rp = params
    run, _, _ = drive(ip, rp)
    res = ResponderHandshake(rp, 0, NOW)
    assert _reasons(res.on_message(run.finish, NOW)) == [FailureReason.UNEXPECTED_MESSAGE]
    ini = InitiatorHandshake(ip, 1, NOW)
    ini.start(NOW)
    assert _reasons(ini.on_message(run.done, NOW)) == [FailureReason.UNEXPECTED_MESSAGE]


def test_static_kem_suite(identities: Ids) -> None:
    # A suite with ML-KEM-768 used as a *static* KEM exercises the path Classic
    # McEliece takes (pinned keys made at provisioning), with a real KEM.
    from gateway.crypto.builtin import ML_KEM_768, X25519
    from gateway.crypto.suites import Suite

    suite = Suite("static-test", (ML_KEM_768, ML_KEM_768, X25519),
                  static_kems=frozenset())
    static = Suite("static-test", (ML_KEM_768, X25519), static_kems=frozenset({"ML-KEM-768"}))
    a_static, b_static = ML_KEM_768.generate(), ML_KEM_768.generate()
    ip, rp = make_params(identities)
    ip = replace(ip, suite=static, static_kem_keys={"ML-KEM-768": a_static},
                 peer_static_kem_keys={"ML-KEM-768": b_static.public})
    rp = replace(rp, suite=static, static_kem_keys={"ML-KEM-768": b_static},
                 peer_static_kem_keys={"ML-KEM-768": a_static.public})
    run, _, _ = drive(ip, rp)
    _assert_same_key(run)
    assert len(run.init) < 4000 + len(suite.name)  # the static key is not sent
    # A responder that pinned another static key refuses.
    rp_bad = replace(rp, peer_static_kem_keys={"ML-KEM-768": ML_KEM_768.generate().public})
    run, _, _ = drive(ip, rp_bad)
    assert _reasons(run.actions) == [FailureReason.BAD_KEY_SHARE]


def test_secrets_are_not_in_reprs(params: tuple[HandshakeParams, ...]) -> None:
    run, _ini, _res = drive(*params)
    assert run.installed_i is not None
    key_hex = bytes(run.installed_i.key).hex()
    for obj in (run.installed_i, params[0], QkdKey("id", b"\x01" * 32)):
        text = repr(obj)
        assert key_hex not in text and "bytearray" not in text and "\\x01" not in text
    assert isinstance(run.installed_i, InstallKey)


OQS_EPHEMERAL = ["frodo976aes", "frodo976shake", "frodo1344aes", "frodo1344shake", "hqc3"]


@pytest.mark.parametrize("suite", OQS_EPHEMERAL)
def test_liboqs_suites_install_the_same_key(identities: Ids, suite: str) -> None:
    require_liboqs()
    ip, rp = make_params(identities, suite=suite)
    run, _, _ = drive(ip, rp)
    _assert_same_key(run)
    assert run.installed_i is not None and run.installed_i.suite == suite
    kem = ip.suite.kems[0]
    assert run.installed_i.sources == ("QKD", kem.name, "X25519")
    assert len(run.init) > kem.public_key_size and len(run.resp) > kem.ciphertext_size


@pytest.mark.parametrize("suite", ["mceliece460896f", "mceliece6688128f"])
def test_mceliece_suites_with_pinned_static_keys(identities: Ids, suite: str) -> None:
    require_liboqs()
    from gateway.crypto.suites import lookup_suite

    s = lookup_suite(suite)
    mc = s.kems[0]
    a_static, b_static = mc.generate(), mc.generate()
    a, b = identities
    ip = HandshakeParams("gw-a", "gw-b", a, b.public, s, static_kem_keys={mc.name: a_static},
                         peer_static_kem_keys={mc.name: b_static.public})
    rp = HandshakeParams("gw-b", "gw-a", b, a.public, s, static_kem_keys={mc.name: b_static},
                         peer_static_kem_keys={mc.name: a_static.public})
    run, _, _ = drive(ip, rp)
    _assert_same_key(run)
    assert run.installed_i is not None
    assert run.installed_i.sources == ("QKD", mc.name, "ML-KEM-768", "X25519")
    # INIT carries a hash of the static key, not the key; RESP its short ciphertext.
    assert len(run.init) < 8000 and len(run.resp) < 8000
    rp_bad = replace(rp, peer_static_kem_keys={mc.name: b_static.public})
    run, _, _ = drive(ip, rp_bad)
    assert _reasons(run.actions) == [FailureReason.BAD_KEY_SHARE]


def test_protocol_version_1_is_refused_by_name(params: tuple[HandshakeParams, ...]) -> None:
    ip, rp = params
    run, _, _ = drive(ip, rp)
    assert run.init[0] == 2
    res = ResponderHandshake(rp, 0, NOW)
    out = res.on_message(b"\x01" + run.init[1:], NOW)
    rejected = [a for a in out if isinstance(a, Rejected)]
    assert len(rejected) == 1 and rejected[0].reason is FailureReason.DECODE_ERROR
    assert "version 1 is no longer supported" in rejected[0].detail
    assert "upgrade the peer" in rejected[0].detail
    # The responder carries on: the current INIT still goes through.
    assert not _reasons(res.on_message(run.init, NOW))
