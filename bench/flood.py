"""Epochs under a control-plane flood, against the same pair quiet, in one run.

Two sites in network namespaces (real `qsgw run` daemons, wireguard-go, the KME
simulator over mutual TLS) rekey every 2 s. For `--seconds` they run quiet
(the baseline), then for as long again an attacker in the initiator's namespace,
so at the peer's own configured address, runs the worst mix of issue 14 against
the responder (`qsgw_lab.floodlab`: held-open and dripping connections, forged
INITs each followed by a frame flood, validly signed replayed INITs), with new
connections just under the responder's rate limit. Meanwhile the responder's
open files, RSS and log lines are sampled.

    python bench/flood.py --json [--seconds 30]

Targets (issue 14): epochs under flood >= 90% of quiet, <= 256 open files,
RSS growth under 50 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qsgw_lab.netns import NetnsLab, netns_unavailable_reason  # noqa: E402
from qsgw_lab.sitelab import CONTROL_PORT, Site, SiteLab  # noqa: E402

TOPOLOGY = ROOT / "configs" / "topologies" / "madqci.yaml"
RATE_LIMIT = 5.0  # the responder's control.rate_limit_per_s (the default)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def _epoch(sites: SiteLab, site: Site, peer: str) -> int:
    st = sites.peer_status(site, peer)
    return int(st["epoch"]) if st else 0


def _phase(sites: SiteLab, b: Site, peer: str, seconds: float,
           samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Run for `seconds`, sampling the responder; (epochs per minute, log lines per s)."""
    assert b.process is not None
    pid = b.process.pid
    e0, l0, t0 = _epoch(sites, b, peer), _lines(b.log_path), time.monotonic()
    while time.monotonic() - t0 < seconds:
        samples.append((_open_files(pid), _rss_mb(pid)))
        time.sleep(0.5)
    dt = time.monotonic() - t0
    e1, l1 = _epoch(sites, b, peer), _lines(b.log_path)
    return (e1 - e0) * 60.0 / dt, (l1 - l0) / dt


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qsgw-flood-") as tmp, \
            NetnsLab(prefix="qsatk") as lab:
        sites = SiteLab(lab, Path(tmp), TOPOLOGY)
        try:
            a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
            b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
            sites.add_wireguard_tunnel(a, b, "required", 2.0, 12.0)
            sites.start_simulator()
            for s in (a, b):
                sites.write_config(s, {"control": {"rate_limit_per_s": RATE_LIMIT}})
                sites.start_daemon(s)
            if not sites.wait_for(lambda: _epoch(sites, b, a.gateway_id) >= 2, 60):
                raise RuntimeError("the pair made no epochs; see the daemons' logs")
            assert b.process is not None
            pid = b.process.pid
            rss0 = _rss_mb(pid)
            quiet: list[tuple[int, float]] = []
            flood: list[tuple[int, float]] = []
            epm_quiet, lps_quiet = _phase(sites, b, a.gateway_id, seconds, quiet)
            refused0 = (sites.status(b) or {}).get("control_refused", {})
            attacker = lab.popen(a.name, [
                sys.executable, "-m", "qsgw_lab.floodlab",
                "--target", f"{b.underlay_ip}:{CONTROL_PORT}", "--claim", a.gateway_id,
                "--responder", b.gateway_id, "--identity-dir", str(a.dir / "identity"),
                "--seconds", str(seconds), "--rate", str(RATE_LIMIT * 0.6), "--holders", "8",
            ], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            epm_flood, lps_flood = _phase(sites, b, a.gateway_id, seconds, flood)
            out, _ = attacker.communicate(timeout=30)
            refused1 = (sites.status(b) or {}).get("control_refused", {})
            peer = sites.peer_status(b, a.gateway_id) or {}
            samples = quiet + flood
            rss_max = max(r for _, r in samples)
            result = {
                "seconds_per_phase": seconds,
                "epochs_per_min_quiet": round(epm_quiet, 2),
                "epochs_per_min_flood": round(epm_flood, 2),
                "flood_vs_quiet": round(epm_flood / epm_quiet, 3) if epm_quiet else None,
                "responder_max_open_files": max(f for f, _ in samples),
                "responder_max_open_files_quiet": max(f for f, _ in quiet),
                "responder_rss_mb_max": round(rss_max, 1),
                "responder_rss_mb_start": round(rss0, 1),
                "responder_rss_growth_mb": round(rss_max - rss0, 1),
                "log_lines_per_s_quiet": round(lps_quiet, 2),
                "log_lines_per_s_flood": round(lps_flood, 2),
                "refused_during_flood": {k: v - refused0.get(k, 0) for k, v in refused1.items()
                                         if v != refused0.get(k, 0)},
                "responder_state_after": peer.get("state"),
                "attacker": json.loads(out.strip().splitlines()[-1]) if out.strip() else None,
            }
            result["targets_met"] = {
                "epochs_90pct_of_quiet": bool(epm_quiet) and epm_flood >= 0.9 * epm_quiet,
                "open_files_le_256": result["responder_max_open_files"] <= 256,
                "rss_growth_lt_50mb": result["responder_rss_growth_mb"] < 50,
            }
            return result
        finally:
            sites.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    args = p.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        print(json.dumps({"error": reason}))
        return 1
    result = run(args.seconds)
    print(json.dumps(result, indent=None if args.json else 2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
