"""Satellite pass schedules: when a QKD link is up, as pure functions of time.

A satellite link exchanges key only while the satellite is in view of the ground
station; the key made in a pass is stored and used later. A schedule is up in
[offset_s + k*period_s, offset_s + k*period_s + duration_s) for every integer k >= 0,
t in seconds since the simulator started (the origin of Fault.outage_windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PassSchedule:
    period_s: float
    duration_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("period_s", "duration_s", "offset_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if self.period_s <= 0 or self.duration_s <= 0:
            raise ValueError("period_s and duration_s must be positive")
        if self.duration_s > self.period_s:
            raise ValueError("duration_s must not exceed period_s")
        if self.offset_s < 0:
            raise ValueError("offset_s must not be negative")

    @property
    def always_up(self) -> bool:
        return self.duration_s >= self.period_s

    def _up_until(self, t: float) -> float:
        """Up-time in [0, t]: whole periods plus the up part of the current one."""
        u = t - self.offset_s
        if u <= 0:
            return 0.0
        k = math.floor(u / self.period_s)
        # max(0, ...): u/period may round up to the next whole period.
        return k * self.duration_s + min(max(0.0, u - k * self.period_s), self.duration_s)

    def up_time(self, t0: float, t1: float) -> float:
        """Seconds the link is up within [t0, t1] (exact; 0 when t1 <= t0)."""
        if t1 <= t0:
            return 0.0
        return max(0.0, self._up_until(t1) - self._up_until(t0))

    def _phase(self, t: float) -> float:
        return (t - self.offset_s) % self.period_s

    def is_up(self, t: float) -> bool:
        return t >= self.offset_s and self._phase(t) < self.duration_s

    def next_change_in(self, t: float) -> float | None:
        """Seconds from t until the link goes up or down; None if it never changes."""
        if t < self.offset_s:
            return self.offset_s - t
        if self.always_up:
            return None
        r = self._phase(t)
        return self.duration_s - r if r < self.duration_s else self.period_s - r
