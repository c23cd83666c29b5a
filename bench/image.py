"""The appliance image: its size, build time, boot to READY, and kernel WireGuard under rotation.

Builds (or finds cached) the image with `make image`, then boots two appliances
under qemu (tests' VM lab: qsgw_lab.vmsites) twice, in this run:

1. quiet: kernel WireGuard with a rotation per hour (none during the run):
   boot_to_ready_s and wg_throughput_mbps_quiet (iperf3 between the VMs);
2. rotating: a rotation every 2 s: wg_throughput_mbps_rotating measured the same
   way, kernel_wireguard_rotations, and ping_lost_across_rotations (a 0.2 s
   ping across the tunnel for the whole run);
3. with --esp: kernel ESP with a PPK every 10 s: kernel_esp_rotations.

The quiet run is the baseline: rotation_throughput_ratio = rotating / quiet.
Prints one JSON object (--save FILE writes it too). Run as root:
    .venv/bin/python bench/image.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qsgw_lab.netns import NetnsLab, PrefixLock
from qsgw_lab.vm import REPO, Report, accel, image_dir
from qsgw_lab.vmsites import (
    INNER,
    VmPair,
    env_prefix,
    ipsec_esp,
    lost_since,
    peer_of,
    wireguard_full,
)

IPERF_S = 10


def _build() -> tuple[float, str]:
    before = image_dir() / "input.sha256"
    old = before.read_text() if before.exists() else ""
    t0 = time.monotonic()
    subprocess.run(["make", "-C", str(REPO), "image"], check=True, capture_output=True,
                   timeout=1800)
    took = time.monotonic() - t0
    return took, "cached" if old and old == before.read_text() else "cold"


def _ready(rep: Report) -> bool:
    p = peer_of(rep)
    return rep["units"]["qsgw.service"] == "active" and p is not None and p["state"] == "ok"


def _run(workdir: Path, rekey_s: float, lifetime_s: float, seconds: float,
         esp: bool = False, iperf_after_epoch: int = 1) -> dict[str, Any]:
    with PrefixLock(env_prefix()), NetnsLab(prefix=env_prefix()) as lab:
        pair = VmPair(lab, workdir)
        try:
            pair.start_simulator()
            report_a: dict[str, Any] = {"ping": [INNER[1]], "ping_interval_s": 0.2}
            if esp:
                report_a["ping_source"] = INNER[0]
            else:
                report_a["iperf3"] = {"target": INNER[1], "seconds": IPERF_S,
                                     "after_epoch": iperf_after_epoch}
            pair.provision(ipsec_esp if esp else wireguard_full, rekey_interval_s=rekey_s,
                           key_lifetime_s=lifetime_s,
                           report=(report_a, {} if esp else {"iperf3_server": True}))
            pair.start()
            a = pair.vms[0]
            rep = a.wait_report(_ready, 400, "READY")
            boot_s = int(rep["ready_monotonic_us"]) / 1e6
            live_from = int(rep["ping"][INNER[1]]["sent"])  # bring-up is not a rotation
            first_epoch = int(peer_of(rep)["epoch"])  # type: ignore[index]
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                a.poll()
                rep = a.reports[-1]
                if not esp and rep.get("iperf3") and time.monotonic() > deadline - seconds / 2:
                    break
                time.sleep(1)
            rep = a.reports[-1]
            last_epoch = int(peer_of(rep)["epoch"])  # type: ignore[index]
            ping = dict(rep["ping"][INNER[1]])
            ping["lost_after_live"] = len(lost_since(ping, live_from))
            return {"boot_to_ready_s": round(boot_s, 1), "rotations": last_epoch - first_epoch,
                    "iperf3": rep.get("iperf3"), "ping": ping,
                    "exposure": _exposure(rep.get("security") or "")}
        finally:
            pair.close()


def _exposure(text: str) -> float | None:
    m = re.search(r"Overall exposure level for qsgw.service: ([\d.]+)", text)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--esp", action="store_true", help="also the kernel ESP run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/image.py needs root (taps, namespaces, mmdebstrap)", file=sys.stderr)
        return 2
    build_s, build_kind = _build()
    manifest = json.loads((image_dir() / "manifest.json").read_text())
    size_mb = sum((image_dir() / f).stat().st_size
                  for f in ("rootfs.squashfs", "vmlinuz", "initrd.img")) / 2**20
    out: dict[str, Any] = {
        "image_mb": round(size_mb, 1), "build_s": round(build_s, 1), "build": build_kind,
        "cold_build_s": manifest.get("build_s"), "accel": accel(),
    }
    with tempfile.TemporaryDirectory(prefix="qsgw-bench-image-") as tmp:
        quiet = _run(Path(tmp) / "quiet", 3600.0, 7200.0, IPERF_S + 25)
        rotating = _run(Path(tmp) / "rotating", 2.0, 10.0, IPERF_S + 25, iperf_after_epoch=2)
        esp = _run(Path(tmp) / "esp", 10.0, 60.0, 60, esp=True) if args.esp else None
    q = (quiet["iperf3"] or {}).get("mbps")
    r = (rotating["iperf3"] or {}).get("mbps")
    out.update({
        "boot_to_ready_s": quiet["boot_to_ready_s"],
        "boot_to_ready_s_second_boot": rotating["boot_to_ready_s"],
        "kernel_wireguard_rotations": rotating["rotations"],
        "kernel_esp_rotations": None if esp is None else esp["rotations"],
        "wg_throughput_mbps_quiet": None if q is None else round(q, 1),
        "wg_throughput_mbps_rotating": None if r is None else round(r, 1),
        "rotation_throughput_ratio": None if not (q and r) else round(r / q, 3),
        "ping_lost_across_rotations": rotating["ping"]["lost_after_live"],
        "ping_sent_across_rotations": rotating["ping"]["sent"],
        "exposure_score": quiet["exposure"],
        "iperf3_errors": [x["iperf3"] for x in (quiet, rotating)
                          if x["iperf3"] is None or "error" in x["iperf3"]],
    })
    text = json.dumps(out, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    return 0 if q and r else 1


if __name__ == "__main__":
    sys.exit(main())
