"""The event-loop lag probe sees a loop held up, and `qsgw status` says so."""

from __future__ import annotations

import asyncio
import time

from gateway.daemon.looplag import LoopLag
from gateway.daemon.status_cli import format_table


async def test_a_blocked_loop_shows_as_lag_and_the_window_is_bounded() -> None:
    seen: list[float] = []
    lag = LoopLag(probe_s=0.02, window_s=0.2, on_sample=seen.append)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # one callback holds the loop, as a burst of handshakes' crypto does
    await asyncio.sleep(0.05)
    doc = lag.as_dict()
    assert doc["max_ms"] >= 250, doc
    assert doc["p50_ms"] < 250, doc  # the other probes fired on time
    await asyncio.sleep(0.4)  # more probes than the window keeps
    task.cancel()
    assert max(seen) >= 0.25 and len(seen) > 10
    later = lag.as_dict()
    assert later["samples"] == 10 and later["max_ms"] < 250, later  # window / probe


def test_status_shows_the_lag_and_calls_a_late_loop_overloaded() -> None:
    doc = {"gateway": "gw-hub", "uptime_s": 60, "peers": [],
           "loop_lag": {"samples": 240, "p50_ms": 1.0, "p99_ms": 12.0, "max_ms": 30.0}}
    head = format_table(doc).splitlines()[0]
    assert "loop lag p99 12 ms" in head and "OVERLOADED" not in head
    doc["loop_lag"] = {"samples": 240, "p50_ms": 90.0, "p99_ms": 900.0, "max_ms": 2000.0}
    assert "OVERLOADED" in format_table(doc).splitlines()[0]
    doc["loop_lag"] = {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    assert "loop lag" not in format_table(doc)
