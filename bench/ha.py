"""Failover of an active/standby pair, and the journal claim on PostgreSQL against SQLite.

The HA lab (qsgw_lab.halab): two members of site A with keepalived (VRRPv3,
advert every 0.2 s), PostgreSQL in its own namespace, one gateway at B, the KME
simulator over mTLS, wireguard-go. B pings A's inner address every 50 ms over
the tunnel. Each round kills the active member (SIGKILL of everything in its
namespace, link cut) and measures the time from its death to the first echo
reply through the survivor, the echo requests lost, and the parts: VRRP (the
survivor sees the virtual address) and the fresh epoch (B installs it). The
victim then boots again as the standby. In the same run, the journal's claim
(one key_ID and one epoch, committed durably) on the lab's PostgreSQL from a
member's namespace, and on a local SQLite file, so the two compare. Then the
same failover with an IPsec tunnel (charon with kernel-libipsec, the epoch key
as PPK: the survivor reauthenticates with a fresh PPK).

    python bench/ha.py --json [--failovers 10] [--ipsec-failovers 3] [--claims 300] [--save FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qsgw_lab.halab import HaLab  # noqa: E402
from qsgw_lab.netns import NetnsLab, netns_unavailable_reason  # noqa: E402
from qsgw_lab.sitelab import SiteLab  # noqa: E402

TOPOLOGY = ROOT / "configs" / "topologies" / "madqci.yaml"
TARGET_WIREGUARD_S = 3.0

CLAIMS = r"""
import json, sys, tempfile, time
from pathlib import Path
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "postgresql":
    from gateway.journal_pg import PgJournal
    j = PgJournal(sys.argv[3], "bench-gw", member="bench", password_file=Path(sys.argv[4]))
else:
    from gateway.journal import Journal
    j = Journal(Path(tempfile.mkdtemp(prefix="qsgw-bench-j-")) / "journal.db")
out = []
for i in range(n + 5):
    t0 = time.perf_counter(); j.commit("peer", i + 1, [f"{kind}-{i}"])
    out.append((time.perf_counter() - t0) * 1e3)
print(json.dumps(out[5:]))
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def claims_ms(ha: HaLab, kind: str, n: int) -> list[float]:
    assert ha.pg is not None
    extra = [ha.pg.conninfo(), str(ha.pg.password_file)] if kind == "postgresql" else []
    res = ha.lab.run("a1", [sys.executable, "-c", CLAIMS, kind, str(n), *extra],
                     timeout=300, check=True)
    values: list[float] = json.loads(res.stdout)
    return values


def _median(values: Any) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def failovers(ha: HaLab, count: int) -> list[dict[str, Any]]:
    """Kill the active member `count` times; each round's figures."""
    assert ha.wait_traffic(90), "the tunnel never carried traffic"
    ha.start_pinger()
    time.sleep(1.0)
    rounds = []
    active = "a1"
    for _ in range(count):
        survivor = "a2" if active == "a1" else "a1"
        holder = ha.active()
        assert holder == active, f"expected {active} to hold the VIP, not {holder}"
        epoch = ha.b_epoch()
        died = ha.kill(active)
        got = ha.failover(died, 30)
        assert got is not None, f"no traffic 30 s after {active} died"
        time.sleep(0.3)
        parts = ha.timeline(survivor, died)
        assert ha.b_epoch() > epoch, f"no fresh epoch after the takeover: {got} {parts}"
        rounds.append({"failover_s": round(got[0], 3), "pings_lost": got[1], **parts})
        ha.revive(active)
        assert ha.sites.wait_for(lambda v=active: ha.role(v) == "standby", 30)
        time.sleep(1.0)
        active = survivor
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=10)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--ipsec-failovers", type=int, default=3,
                        help="IPsec (charon, PPK) failovers after the WireGuard ones; 0: none")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        print(json.dumps({"error": f"needs network namespaces: {reason}"}))
        return 1
    result: dict[str, Any] = {"failovers": args.failovers, "kind": "wireguard"}
    with tempfile.TemporaryDirectory(prefix="qsgw-bench-ha-") as tmp, \
            NetnsLab(prefix="h19bench") as lab:
        sites = SiteLab(lab, Path(tmp), TOPOLOGY)
        ha = HaLab(sites)
        try:
            ha.build(rekey=30.0, lifetime=120.0)
            rounds = failovers(ha, args.failovers)
            times = [r["failover_s"] for r in rounds]
            result["failover_s_p50"] = round(statistics.median(times), 3)
            result["failover_s_max"] = round(max(times), 3)
            result["pings_lost_per_failover"] = round(
                statistics.mean(r["pings_lost"] for r in rounds), 1)
            result["ping_interval_s"] = 0.05
            result["takeover_s_p50"] = _median(r["takeover_s"] for r in rounds)
            result["b_epoch_s_p50"] = _median(r["b_epoch_s"] for r in rounds)
            result["rounds"] = rounds
            pg = claims_ms(ha, "postgresql", args.claims)
            lite = claims_ms(ha, "sqlite", args.claims)
            result["journal_claim_ms_p50"] = {"postgresql": round(statistics.median(pg), 3),
                                              "sqlite": round(statistics.median(lite), 3)}
            result["journal_claim_ms_p99"] = {"postgresql": round(pct(pg, 99), 3),
                                              "sqlite": round(pct(lite, 99), 3)}
            result["journal_claim_pg_over_sqlite"] = round(
                statistics.median(pg) / statistics.median(lite), 2)
        finally:
            sites.close()
            ha.close()
    if args.ipsec_failovers:
        with tempfile.TemporaryDirectory(prefix="qsgw-bench-ha-") as tmp, \
                NetnsLab(prefix="h19bips") as lab:
            sites = SiteLab(lab, Path(tmp), TOPOLOGY)
            ha = HaLab(sites)
            try:
                ha.build(rekey=30.0, lifetime=120.0, kind="ipsec")
                rounds = failovers(ha, args.ipsec_failovers)
                result["ipsec"] = {
                    "failovers": len(rounds),
                    "failover_s_p50": _median(r["failover_s"] for r in rounds),
                    "failover_s_max": max(r["failover_s"] for r in rounds),
                    "pings_lost_per_failover": round(
                        statistics.mean(r["pings_lost"] for r in rounds), 1),
                    "rounds": rounds}
            finally:
                sites.close()
                ha.close()
    result["targets"] = {
        "wireguard_failover_max_under_3s": result["failover_s_max"] < TARGET_WIREGUARD_S,
    }
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
