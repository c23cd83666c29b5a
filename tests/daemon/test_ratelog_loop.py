"""The event loop's own errors (asyncio's servers at the descriptor limit) are rate-limited."""

from __future__ import annotations

import errno
import logging

import pytest

from gateway.daemon.ratelog import RateLimitedLog, loop_error_handler


def test_a_burst_of_accept_errors_logs_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    handler = loop_error_handler(RateLimitedLog(logging.getLogger("t.loop"), burst=3,
                                                window_s=10.0, clock=lambda: now[0]))
    exc = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="t.loop"):
        for _ in range(1000):  # what CPython's accept loop does at EMFILE, per second
            handler(None, {"message": "socket.accept() out of system resource",
                           "exception": exc})
        handler(None, {"message": "Task exception was never retrieved"})
        now[0] = 11.0
        handler(None, {"message": "socket.accept() out of system resource", "exception": exc})
    accept = [r for r in caplog.records if "socket.accept()" in r.getMessage()]
    assert len(accept) == 4, len(accept)
    assert "Too many open files" in accept[0].getMessage()
    assert "997 similar suppressed" in accept[-1].getMessage()
    assert any("never retrieved" in r.getMessage() for r in caplog.records)
