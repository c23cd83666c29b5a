"""Tunnel liveness: whether a keyed tunnel is carrying traffic, from what the data plane says.

Pure: the session feeds it the driver's `TunnelHealth` and the clock, and shows
what it returns. A peer is `ok` only when its key is installed *and* its tunnel
is live; this decides the second half.

- live: the data plane completed a handshake (WireGuard) or holds an IKE SA
  with the PPK and its CHILD_SA (IPsec).
- confirmed: that handshake or SA is newer than the current key, so both ends
  hold the same key (a lost DONE leaves the responder on a key the initiator
  never installed, and no data-plane handshake ever confirms it).
- down: keyed, but not live, or (IPsec) the current key not confirmed, for
  longer than the bound (`tunnel.liveness_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.tunnels.base import TunnelHealth

#: States `Liveness.observe` returns.
PENDING, LIVE, DOWN = "pending", "live", "down"


@dataclass
class LivenessVerdict:
    state: str  # pending | live | down
    confirmed: bool
    reason: str


class Liveness:
    """One tunnel's liveness, updated by each health sample."""

    def __init__(self, bound_s: float, require_confirm: bool) -> None:
        self.bound_s = bound_s
        # IPsec: every epoch's PPK makes a new IKE SA (reauthentication), so an SA
        # older than the key past the bound means the peers hold different keys.
        # WireGuard re-handshakes with the new PSK on its own schedule (REKEY_AFTER_TIME)
        # and a PSK mismatch then ends the session (REJECT_AFTER_TIME): liveness alone
        # shows it, and confirmation is reported but never marks the tunnel down.
        self.require_confirm = require_confirm
        self._key_mono: float | None = None  # when the current key was installed
        self._first_key_mono: float | None = None
        self._last_live_mono: float | None = None
        self.down_since_mono = 0.0  # when the verdict last became DOWN
        self.verdict = LivenessVerdict(PENDING, False, "no key installed yet")

    def key_installed(self, now_mono: float) -> None:
        self._key_mono = now_mono
        if self._first_key_mono is None:
            self._first_key_mono = now_mono

    def reset(self) -> None:
        """The tunnel was blocked or stopped: nothing to judge until the next key."""
        self._key_mono = self._first_key_mono = self._last_live_mono = None
        self.verdict = LivenessVerdict(PENDING, False, "no key installed")

    def observe(self, health: TunnelHealth, now_mono: float) -> LivenessVerdict:
        was_down = self.verdict.state == DOWN
        verdict = self._judge(health, now_mono)
        if verdict.state == DOWN and not was_down:
            self.down_since_mono = now_mono
        return verdict

    def _judge(self, health: TunnelHealth, now_mono: float) -> LivenessVerdict:
        if self._key_mono is None:
            self.verdict = LivenessVerdict(PENDING, False, "no key installed yet")
            return self.verdict
        age = health.last_handshake_age_s
        handshake_mono = None if age is None else now_mono - age
        # A little slack: the driver's age is rounded and sampled after the install.
        confirmed = (health.up and handshake_mono is not None
                     and handshake_mono >= self._key_mono - 1.0)
        if health.up:
            self._last_live_mono = now_mono
        since = max(self._first_key_mono or now_mono, self._last_live_mono or 0.0)
        if not health.up:
            if now_mono - since > self.bound_s:
                never = self._last_live_mono is None
                self.verdict = LivenessVerdict(
                    DOWN, False,
                    (f"no data-plane handshake in {self.bound_s:g} s since the first key"
                     if never else f"not live for {now_mono - since:.0f} s")
                    + f": {health.detail}")
            else:
                self.verdict = LivenessVerdict(PENDING, False,
                                               f"waiting for the data plane: {health.detail}")
            return self.verdict
        if self.require_confirm and not confirmed and now_mono - self._key_mono > self.bound_s:
            self.verdict = LivenessVerdict(
                DOWN, False,
                f"the current key was not confirmed by a data-plane handshake within "
                f"{self.bound_s:g} s (the two ends hold different keys: a lost DONE, or "
                f"the peer did not install it); {health.detail}")
            return self.verdict
        self.verdict = LivenessVerdict(LIVE, confirmed, health.detail)
        return self.verdict
