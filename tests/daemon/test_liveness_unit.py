"""The liveness verdict (pure): pending, live, down, and confirmation of the current key."""

from __future__ import annotations

from gateway.daemon.liveness import DOWN, LIVE, PENDING, Liveness
from gateway.tunnels.base import TunnelHealth

UP = TunnelHealth(up=True, detail="up", last_handshake_age_s=0.0)
NONE = TunnelHealth(up=False, detail="no handshake yet")


def test_nothing_to_judge_before_a_key() -> None:
    assert Liveness(5, require_confirm=False).observe(NONE, 100.0).state == PENDING


def test_never_live_is_down_after_the_bound_and_says_so() -> None:
    lv = Liveness(5, require_confirm=False)
    lv.key_installed(100.0)
    assert lv.observe(NONE, 104.0).state == PENDING
    v = lv.observe(NONE, 105.5)
    assert v.state == DOWN and "no data-plane handshake in 5 s" in v.reason
    assert lv.down_since_mono == 105.5
    assert lv.observe(NONE, 107.0).state == DOWN and lv.down_since_mono == 105.5


def test_live_then_lost_counts_from_the_last_live_sample() -> None:
    lv = Liveness(5, require_confirm=False)
    lv.key_installed(100.0)
    assert lv.observe(UP, 101.0).state == LIVE
    assert lv.observe(NONE, 105.0).state == PENDING  # 4 s since last live
    v = lv.observe(NONE, 106.5)
    assert v.state == DOWN and "not live for 6 s" in v.reason
    assert lv.observe(UP, 107.0).state == LIVE


def test_rotation_does_not_flap_and_confirmation_follows_a_new_handshake() -> None:
    lv = Liveness(5, require_confirm=True)
    lv.key_installed(100.0)
    assert lv.observe(UP, 100.5).confirmed
    lv.key_installed(110.0)  # the next epoch's key
    old_sa = TunnelHealth(up=True, detail="old SA", last_handshake_age_s=10.0)
    v = lv.observe(old_sa, 111.0)
    assert v.state == LIVE and not v.confirmed  # still carrying, not yet on the new key
    v = lv.observe(TunnelHealth(up=True, detail="old SA", last_handshake_age_s=16.0), 116.0)
    assert v.state == DOWN and "not confirmed" in v.reason  # IPsec: the peers disagree
    v = lv.observe(TunnelHealth(up=True, detail="new SA", last_handshake_age_s=0.5), 116.5)
    assert v.state == LIVE and v.confirmed


def test_wireguard_does_not_require_confirmation() -> None:
    lv = Liveness(5, require_confirm=False)
    lv.key_installed(100.0)
    v = lv.observe(TunnelHealth(up=True, detail="old", last_handshake_age_s=60.0), 120.0)
    assert v.state == LIVE and not v.confirmed


def test_reset_forgets_the_key() -> None:
    lv = Liveness(5, require_confirm=False)
    lv.key_installed(100.0)
    lv.observe(NONE, 110.0)
    lv.reset()
    assert lv.observe(NONE, 200.0).state == PENDING
