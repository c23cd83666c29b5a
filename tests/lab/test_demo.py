"""`make demo` tells the truth: a tunnel broken on purpose fails the demo, by name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _requires import require

pytestmark = pytest.mark.netns


def test_a_demo_with_a_broken_tunnel_exits_non_zero_and_names_it() -> None:
    require("netns", "wireguard-go", "wg", "ping", "tun", "charon", "nft", "mosquitto")
    env = {**os.environ, "DEMO_SECONDS": "30", "DEMO_BREAK": "ipsec"}
    proc = subprocess.run([sys.executable, "-m", "qsgw_lab.demo"], capture_output=True,
                          text=True, timeout=240, env=env)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-2000:]
    failed = out[out.index("FAILED:"):]
    assert "gw-inta -> gw-upm-ipsec (ike) never carried a ping" in failed
    assert "UDP 500/4500" in failed, failed  # the reason, in the tunnel's own words
    assert "gw-sgsics" not in failed and "gw-upm (wg)" not in failed  # only the broken one
    assert "once-only key check" in out and "no key used twice" in out
    kept = out.split("configs and logs kept in ", 1)[1].split()[0]
    assert os.path.isdir(kept) and any(name.endswith(".log") or name == "daemon.log"
                                       for _d, _s, files in os.walk(kept) for name in files)
    subprocess.run(["rm", "-rf", kept], check=False)
