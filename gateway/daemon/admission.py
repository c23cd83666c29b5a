"""Admission of a control connection before it costs the session anything.

The control server hands a connection to a peer's session (and so to its lock)
only after its INIT has passed every check a stranger could fail: the source is
the *claimed* peer's configured address, the INIT names us, its signatures
verify (Ed25519 first: the cheaper check refuses most forgeries), its epoch is
above the journal's and above every INIT already admitted for that peer (a
captured INIT replayed while the first is in flight), within what the journal
can store, and its timestamp is fresh. Refusals are counted under a fixed set
of reasons, so an attacker's choice of values cannot grow our state.

No stateless cookie (as WireGuard's or Rosenpass's) is used: the control
channel is TCP, whose handshake already proves the source can receive at its
address, which is all a cookie proves; an attacker who owns the peer's address
passes either test. What keeps such an attacker cheap is here and in
`conntable`: signature checks before any lock or key fetch, a per-source
connection rate that only refused connections spend, caps that evict the
oldest unadmitted connection, and closing on the first refused frame.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.handshake import transcript
from gateway.handshake.messages import Init
from gateway.identity import PublicIdentity
from gateway.journal import MAX_EPOCH, JournalError

# The only keys the refusal counters ever have (status document, metrics).
REFUSAL_REASONS: tuple[str, ...] = (
    "not_a_peer_address",  # source is no configured peer's address
    "rate_limited",  # the source spent its refused-connection budget
    "server_busy",  # all connection slots hold admitted handshakes
    "source_busy",  # the source's slots hold admitted handshakes
    "evicted",  # an unadmitted connection made room for a newer one
    "bad_frame",  # oversized, cut or late first frame
    "undecodable",
    "not_init",  # the first frame is another message type
    "unknown_peer",  # the INIT names no configured peer
    "wrong_source",  # the INIT's claimed peer does not live at this source
    "wrong_responder",  # the INIT names another gateway as responder
    "bad_signature",
    "replay",  # epoch not above the journal's or an admitted INIT's
    "epoch_out_of_range",  # above what the journal can store
    "stale",  # timestamp outside the window
    "peer_busy",  # the peer already has its admitted handshakes going
    "lock_timeout",  # admitted, but the peer's session stayed busy
    "not_ready",  # the session cannot answer yet (tunnel not up, wrong role)
    "standby",  # this HA member is the standby: the active one answers
    "journal_unavailable",  # the journal's database does not answer: no new epoch
)


class RefusalCounters:
    """Counts per fixed reason; anything else is counted as `other`."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = dict.fromkeys((*REFUSAL_REASONS, "other"), 0)

    def count(self, reason: str) -> str:
        key = reason if reason in self._counts else "other"
        self._counts[key] += 1
        return key

    def __getitem__(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REFUSAL_REASONS
    detail: str  # for the (rate-limited) log only: may hold attacker-chosen text


class InitAdmission:
    """The pre-lock checks of an INIT. Pure apart from the callables it is given."""

    def __init__(self, local_id: str, timestamp_window_s: float,
                 addresses_of: Callable[[str], set[str]],
                 last_epoch: Callable[[str], int],
                 clock: Callable[[], float] = time.time) -> None:
        self.local_id = local_id
        self.timestamp_window_s = timestamp_window_s
        self._addresses_of = addresses_of
        self._last_epoch = last_epoch
        self._clock = clock
        self._admitted: dict[str, int] = {}  # peer -> highest INIT epoch admitted
        self._identities: dict[str, PublicIdentity] = {}  # identity text -> parsed

    def check(self, init: Init, source: str, peer_identity_text: str) -> Refusal | None:
        peer = init.initiator_id
        if source not in self._addresses_of(peer):
            return Refusal("wrong_source", f"INIT claims {peer}, whose address is not {source}")
        if init.responder_id != self.local_id:
            return Refusal("wrong_responder", "INIT names another responder")
        if not 1 <= init.epoch <= MAX_EPOCH:
            return Refusal("epoch_out_of_range", f"epoch outside 1..{MAX_EPOCH}")
        if not self._verify(init, peer_identity_text):
            return Refusal("bad_signature", f"INIT claiming {peer}: signature invalid")
        try:
            last = self._last_epoch(peer)
        except JournalError as exc:  # fail closed: an epoch we cannot check is refused
            return Refusal("journal_unavailable", str(exc))
        floor = max(last, self._admitted.get(peer, 0))
        if init.epoch <= floor:
            return Refusal("replay", f"{peer}: epoch {init.epoch} not above {floor}")
        if abs(init.timestamp_ms / 1000.0 - self._clock()) > self.timestamp_window_s:
            return Refusal("stale", f"{peer}: INIT timestamp outside the window")
        self._admitted[peer] = init.epoch
        return None

    def forget(self, peers: Iterable[str]) -> None:
        """Drop the memory of removed peers (reload)."""
        for p in peers:
            self._admitted.pop(p, None)

    def _verify(self, init: Init, identity_text: str) -> bool:
        ident = self._identities.get(identity_text)
        if ident is None:
            if len(self._identities) > 65536:  # texts of peers long removed (reloads)
                self._identities.clear()
            ident = self._identities[identity_text] = PublicIdentity.from_text(identity_text)
        return ident.verify(init.signed_part, init.sig_ed25519, init.sig_mldsa,
                            transcript.SIG_CONTEXT_INIT)


class FloodMonitor:
    """Turns a stream of refusals into one alarm: raised when more than `threshold`
    refusals fall within `window_s`, cleared after `quiet_s` below it."""

    def __init__(self, set_alarm: Callable[[bool, str], None], threshold: int = 50,
                 window_s: float = 10.0, quiet_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._set_alarm = set_alarm
        self.threshold, self.window_s, self.quiet_s = threshold, window_s, quiet_s
        self._clock = clock
        self._times: deque[float] = deque(maxlen=threshold + 1)
        self.active = False
        self._last_flood = 0.0

    def refused(self) -> None:
        now = self._clock()
        self._times.append(now)
        if len(self._times) > self.threshold and now - self._times[0] <= self.window_s:
            self._last_flood = now
            if not self.active:
                self.active = True
                self._set_alarm(True, f"more than {self.threshold} control connections "
                                      f"refused within {self.window_s:g} s")

    def tick(self) -> None:
        if self.active and self._clock() - self._last_flood >= self.quiet_s:
            self.active = False
            self._set_alarm(False, f"no flood of refusals for {self.quiet_s:g} s")


def counts_delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
