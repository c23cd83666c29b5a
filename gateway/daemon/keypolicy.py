"""Key-spending policy of a session, pure: the QKD key budget, retry backoff, scarce sharing.

No I/O and no clock of its own: the session passes the times and numbers in.
"""

from __future__ import annotations

import math
import random
from collections import deque

# Keys are plentiful while the link's pool holds at least this many epochs' worth.
# Below it (a shared MDI hub run short, a satellite link between passes) a key
# held back for our next epoch is a key another tunnel is waiting for: no
# prefetch, and rekeys are spaced out (see rekey_interval).
PREFETCH_RESERVE_EPOCHS = 8
# A failing tunnel never spends QKD keys faster than a healthy one: at most this
# window's worth of epochs at the rekey interval (plus one) in any such window.
KEY_BUDGET_WINDOW_S = 3600.0


class KeyBudget:
    """When one peer's handshakes were handed QKD keys, and when it may spend again."""

    def __init__(self, window_s: float = KEY_BUDGET_WINDOW_S) -> None:
        self.window_s = window_s
        self.spends: deque[float] = deque()

    def spent(self, now: float) -> None:
        self.spends.append(now)

    def count(self, now: float) -> int:
        """Spends within the window ending at `now` (older ones are forgotten)."""
        while self.spends and now - self.spends[0] >= self.window_s:
            self.spends.popleft()
        return len(self.spends)

    def wait(self, now: float, rekey_interval_s: float) -> float:
        """Seconds until another epoch's keys may be spent (0: now): a healthy
        tunnel spends one window's worth of epochs at the rekey interval, plus one."""
        if self.count(now) < math.ceil(self.window_s / rekey_interval_s) + 1:
            return 0.0
        return self.spends[0] + self.window_s - now


def retry_base(attempt: int, initial: float, maximum: float, rekey_interval_s: float,
               spent_key: bool) -> float:
    """The exponential backoff before retry `attempt` (1 = the first failure).

    A failure that spent a QKD key (the tunnel did not come up) backs off up to
    the rekey interval at least, so a broken tunnel spends keys no faster than a
    healthy one."""
    cap = max(maximum, rekey_interval_s) if spent_key else maximum
    growth: float = 2 ** min(attempt - 1, 30)
    return min(cap, initial * growth)


def rekey_interval(rekey_interval_s: float, key_lifetime_s: float, scarce: bool) -> float:
    """The rekey interval, stretched to half the key lifetime while QKD keys are
    scarce: every tunnel on a short pool then asks for fewer keys, so the pool
    can go round all of them, and the other half of the lifetime is left for
    backed-off retries before the key expires."""
    if scarce:
        return max(rekey_interval_s, key_lifetime_s / 2)
    return rekey_interval_s


def share_scarce_keys(base: float, initial: float, key_lifetime_s: float,
                      key_age_s: float | None) -> float:
    """The retry delay when the KME had no key for us: scaled by how much of our
    current key's lifetime is left (`key_age_s` None: no usable key). Tunnels
    sharing a short pool (a shared MDI hub, a relay hop) then ask in order of
    need: one whose key is about to expire retries at the initial backoff, one
    just keyed waits up to the full backoff, so the keys there are go to the
    tunnel nearest to starving."""
    if key_age_s is None:
        return min(base, initial)  # no usable key: most in need
    left = key_lifetime_s - key_age_s
    share = min(1.0, max(0.0, left / key_lifetime_s))
    return initial + (base - initial) * share if base > initial else base


def jittered_interval(interval_s: float, first: bool, rng: random.Random | None = None) -> float:
    """The delay to the next rekey after an epoch. The first after a session starts
    falls anywhere in 0.1-1 interval: sessions that start together (a hub's
    thousands at boot) spread over a whole interval at once, instead of rekeying in
    step ever after. Later ones take 1-1.1 intervals: the jitter keeps them from
    falling back into step, and a delay never shorter than the interval keeps a
    healthy tunnel within its key budget (KeyBudget)."""
    r = rng or random
    return interval_s * (r.uniform(0.1, 1.0) if first else r.uniform(1.0, 1.1))


def first_rekey_hold(interval_s: float, key_lifetime_s: float) -> float:
    """The longest a session keyed in a boot's queue waits for the queue to drain before
    it draws its first rekey (jittered_interval, first): the first rekey then still
    comes while at least one interval of the key's lifetime is left for retries."""
    return max(0.0, min(interval_s, key_lifetime_s - 2 * interval_s))
