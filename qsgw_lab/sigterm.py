"""SIGTERM unwinds like Ctrl-C, so that labs remove their namespaces and processes."""

from __future__ import annotations

import os
import signal
from types import FrameType


def unwind_on_sigterm() -> None:
    """From now on SIGTERM (a CI timeout, `timeout`, `kill`) raises KeyboardInterrupt
    in this process: context managers and fixtures unwind, and the labs clean up."""
    main_pid = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # pyroute2 forks helpers that inherit this handler and are ended with
        # SIGTERM: only the main process unwinds, or a fork would run our cleanup.
        if os.getpid() != main_pid:
            os._exit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
