"""Rate-limited logging: a few lines per key per window, then a count of what was held back.

An attacker decides how often a refusal happens, so refusals must not decide
how much we log: each key (a fixed refusal reason) gets `burst` lines per
`window_s`; the rest are counted and reported on the key's next line (or by
`flush`) as "N similar suppressed".
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Window:
    started: float
    emitted: int = 0
    suppressed: int = 0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, burst: int = 5, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` under `key` unless its window is spent; True when written."""
        now = self._clock()
        w = self._windows.get(key)
        if w is None or now - w.started >= self.window_s:
            held = w.suppressed if w is not None else 0
            w = self._windows[key] = _Window(now)
            if held:
                msg += " (%d similar suppressed in the last %.0f s)"
                args = (*args, held, self.window_s)
        if w.emitted >= self.burst:
            w.suppressed += 1
            self.suppressed_total += 1
            return False
        w.emitted += 1
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def flush(self) -> None:
        """Report keys whose window has ended with lines held back (call periodically)."""
        now = self._clock()
        for key, w in list(self._windows.items()):
            if now - w.started >= self.window_s:
                if w.suppressed:
                    self.logger.warning("%s: %d similar lines suppressed in the last %.0f s",
                                        key, w.suppressed, self.window_s)
                del self._windows[key]


def loop_error_handler(rlog: RateLimitedLog) -> Callable[[Any, dict[str, Any]], None]:
    """An asyncio exception handler that logs each kind of loop error at a bounded rate.

    asyncio's own servers (the status socket) log every failed accept(); at the
    descriptor limit CPython retries up to its backlog at once, each with a
    traceback: thousands of lines a second. The message names the kind.
    """

    def handler(loop: Any, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        exc = context.get("exception")
        detail = ""
        if isinstance(exc, BaseException):
            detail = "\n" + "".join(traceback.format_exception(exc)).rstrip()
        rlog.log(logging.ERROR, f"loop:{message[:80]}", "%s%s", message, detail)

    return handler
