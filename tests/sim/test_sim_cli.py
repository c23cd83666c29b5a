"""`qsgw kme-sim` as a process: starts, prints, writes endpoints.json, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from simsupport import tls_context

REPO = Path(__file__).resolve().parents[2]


def test_kme_sim_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "kme-sim",
            "--topology",
            str(REPO / "configs/topologies/madqci.yaml"),
            "--state-dir",
            str(state),
            "--base-port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("endpoints written to"):
                break
        out = "".join(lines)
        assert "KME KME_UPM listens on https://127.0.0.1:" in out, out
        assert "SAE SAE_UPM_BACKUP at KME_UPM" in out
        assert "admin (faults) at http://127.0.0.1:" in out
        ep = json.loads((state / "endpoints.json").read_text())
        inta = ep["saes"]["SAE_INTA_GW"]
        kme = ep["kmes"]["KME_INTA"]
        ctx = tls_context(kme["ca"], inta["cert"], inta["key"])
        with httpx.Client(base_url=kme["url"], verify=ctx, timeout=10) as c:
            r = c.get("/api/v1/keys/SAE_SGSICS_GW/status")
            assert r.status_code == 200
            assert r.json()["target_KME_ID"] == "KME_SGSICS"
        with httpx.Client(base_url=ep["admin"], timeout=10) as admin:
            assert admin.put("/faults/KME_INTA", json={"outage": True}).status_code == 200
        with httpx.Client(base_url=kme["url"], verify=ctx, timeout=10) as c:
            assert c.get("/api/v1/noop").status_code == 503
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        assert rc == 0
        assert "KME simulator stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_kme_sim_bad_topology_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkmes: []\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "kme-sim",
            "--topology",
            str(bad),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "bad.yaml: kmes: must be a non-empty list of KMEs" in r.stderr
