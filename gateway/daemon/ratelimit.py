"""Per-source token buckets for the control server (pure; the clock is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows `rate_per_s` new connections per source, with bursts of `burst`."""

    def __init__(self, rate_per_s: float, burst: float | None = None, max_sources: int = 4096):
        self.rate = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s * 2)
        self.max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._evict(now)
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def refund(self, source: str) -> None:
        """Give back the token of a connection that turned out to be wanted."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def _evict(self, now: float) -> None:
        # Forget full buckets first (sources that have been quiet); bounded memory.
        full = [s for s, b in self._buckets.items()
                if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for source in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[source]
