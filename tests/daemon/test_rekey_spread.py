"""A hub's sessions that start together rekey spread out, and stay spread (keypolicy)."""

from __future__ import annotations

import random
from collections import Counter

from gateway.daemon.keypolicy import KEY_BUDGET_WINDOW_S, KeyBudget, jittered_interval

INTERVAL = 120.0


def test_ten_thousand_sessions_started_together_never_bunch() -> None:
    rng = random.Random(18)
    n = 10_000
    # Every first epoch within the same 20 s (a hub's start), then the daemon's schedule.
    due = [rng.uniform(0.0, 20.0) for _ in range(n)]
    due = [t + jittered_interval(INTERVAL, first=True, rng=rng) for t in due]
    seen: Counter[int] = Counter()
    for _ in range(40):  # 40 rekeys each: over an hour and a quarter
        for i, t in enumerate(due):
            seen[int(t // 10)] += 1  # handshakes per 10 s
            due[i] = t + jittered_interval(INTERVAL, first=False, rng=rng)
    mean = n / INTERVAL * 10
    # From the second interval on, no 10 s holds more than twice the mean (83/s -> 833).
    busiest = max(c for b, c in seen.items() if 2 * INTERVAL / 10 <= b < 30 * INTERVAL / 10)
    assert busiest < 2 * mean, (busiest, mean)


def test_a_healthy_jittered_tunnel_stays_within_its_key_budget() -> None:
    rng = random.Random(7)
    for _ in range(200):
        budget, now = KeyBudget(), 0.0
        first = True
        for _ in range(int(3 * KEY_BUDGET_WINDOW_S / INTERVAL)):
            assert budget.wait(now, INTERVAL) == 0.0  # never held back by its own rekeys
            budget.spent(now)
            now += jittered_interval(INTERVAL, first=first, rng=rng)
            first = False
