"""Event-loop lag: how late a short timer fires, the first sign of an overloaded gateway.

One event loop runs every session, the control server and the status socket. When
the work that is ready at once outgrows a core, everything waits in line: a
handshake's ten awaits, a status query's chunks, a liveness sample. The lag of a
timer that should fire every PROBE_S says by how much, before handshakes time out.
The status document and the metrics show it over the last minute.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

PROBE_S = 0.25
WINDOW_S = 60.0
# A p99 lag from here on is past what the handshakes can wait: `qsgw status` says
# OVERLOADED.
OVERLOADED_MS = 250.0


class LoopLag:
    """The lag of a PROBE_S timer, kept for WINDOW_S (a bounded deque)."""

    def __init__(self, probe_s: float = PROBE_S, window_s: float = WINDOW_S,
                 on_sample: Callable[[float], None] | None = None) -> None:
        self.probe_s = probe_s
        self._samples: deque[float] = deque(maxlen=max(1, int(window_s / probe_s)))
        self._on_sample = on_sample

    def add(self, lag_s: float) -> None:
        self._samples.append(max(0.0, lag_s))
        if self._on_sample is not None:
            self._on_sample(self._samples[-1])

    async def run(self) -> None:
        while True:
            due = time.monotonic() + self.probe_s
            await asyncio.sleep(self.probe_s)
            self.add(time.monotonic() - due)

    def as_dict(self) -> dict[str, Any]:
        """Over the window: median, 99th percentile and worst, in ms."""
        if not self._samples:
            return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        ordered = sorted(self._samples)
        n = len(ordered)

        def at(q: float) -> float:
            return round(ordered[min(n - 1, int(q * n))] * 1e3, 1)

        return {"samples": n, "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}
