"""Not collected by the suite: test_sigterm_cleanup runs it and SIGTERMs it midway."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qsgw_lab.netns import NetnsLab


def test_sits_in_a_lab_until_killed() -> None:
    with NetnsLab(prefix=os.environ["VICTIM_PREFIX"]) as lab:
        ns = lab.add_namespace("a")
        proc = lab.popen("a", ["sleep", "120"])
        Path(os.environ["VICTIM_READY"]).write_text(f"{ns} {proc.pid}\n")
        time.sleep(120)  # bounded: the test sends SIGTERM within seconds
