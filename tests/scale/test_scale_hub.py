"""One hub keeps 1,000 peers keyed: bench/scale.py scaled down, checked for behaviour only.

The real hub daemon, the KME simulator over mutual TLS, one wireguard-go
interface with all peers, the remote gateways in two processes (see
qsgw_lab/remote_peers.py). Timings are the benchmark's business (rule 7): here,
every peer is keyed and rekeyed on both ends, nothing failed, and no QKD key
was used twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _requires import require

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PEERS = 1000
# Its own namespace prefix, so that it never meets another run's namespaces.
PREFIX = os.environ.get("QSGW_SCALE_PREFIX", "qsgwscale")


def test_a_hub_keeps_a_thousand_peers_keyed_without_failure_or_key_reuse(
        tmp_path: Path) -> None:
    require("netns", "wireguard-go", "tun")
    out = tmp_path / "scale.json"
    # A 30 s rekey interval: within the 60 s measured, every peer rekeys after its first epoch.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--peers", str(PEERS), "--seconds",
         "60", "--rekey", "30", "--warmup", "15", "--prefix", PREFIX, "--json", "--save",
         str(out), "--keep", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=600)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted((tmp_path / "logs").glob("*.log"))) \
        if (tmp_path / "logs").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    result = json.loads(out.read_text())
    checks = result["checks"]
    assert result["peers"] == PEERS
    # Every peer keyed, at the hub and at its remote end.
    assert checks["peers_keyed_at_end"] == PEERS, checks
    assert checks["remote_peers_without_epoch"] == 0, checks
    # Rekeyed too: more epochs than peers, and both ends count the same ones.
    assert checks["epochs_whole_run"] > 1.5 * PEERS, checks
    assert checks["remote_epochs"] >= checks["epochs_whole_run"] - 32, checks
    # No failure anywhere, warm-up included.
    assert checks["hub_failures_whole_run"] == 0, checks
    assert checks["remote_failures"] == 0 and not checks["remote_errors"], checks
    assert result["failures"] == 0
    # No key used twice: the hub journalled each key_ID once, each remote end used
    # only key_IDs the hub journalled, each once.
    assert checks["key_ids_reused"] == 0, checks
    assert checks["remote_key_ids_unknown_to_hub"] == 0, checks
    assert checks["key_ids_journalled"] >= checks["epochs_whole_run"], checks
    # The SIGHUP that added one peer touched no other.
    assert checks["sighup_log"].endswith("1 added, 0 removed, 0 changed"), checks
    assert checks["peers_in_status_after_sighup"] == PEERS + 1
    assert checks["hub_exit_code"] == 0
    # The hub says how late its loop runs (4 probes a second, the last minute).
    lag = result["parts"]["hub_loop_lag_last_minute"]
    assert lag["samples"] >= 200 and lag["p50_ms"] <= lag["p99_ms"] <= lag["max_ms"], lag
