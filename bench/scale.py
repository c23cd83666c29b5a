"""Scale: one hub gateway keeps N peers (10,000 by default) keyed, measured.

One real `qsgw run` hub in a network namespace, with its real control server,
journal, audit trail, metrics and KME client; the KME simulator over mutual TLS
with a generated madqci-style topology (a shared MDI-QKD hub pool, one SAE and
one client certificate per remote gateway); one wireguard-go interface holding
all N peers, which the hub keys over UAPI (`manage: psk-only`). The remote
gateways are a few `qsgw_lab.remote_peers` processes, each thousands of
identities running the project's handshake state machines over TCP (see that
module). The hub initiates to half of the peers and answers the other half.

Order: build (PKI, identities, one UAPI set of N peers), load the config
(config_load_s), start the hub, start the remote sides, warm up until every
peer has an epoch, then measure for --seconds (at least one rekey interval by
default): the hub's CPU and RSS, handshake latencies (trigger to installed, at
the hub, from its log), epochs, failures, KME calls (its metrics), journal
commits (its journal). Then `qsgw status --json`, and a SIGHUP that adds one
peer. Baselines in the same run: the targets of issue 18, and the one-peer
figures the hub's work scales from (a UAPI get of the interface).

    python bench/scale.py --json [--peers 10000] [--seconds 150] [--save FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.daemon.status import read_status  # noqa: E402
from qsgw_lab.netns import NetnsLab, netns_unavailable_reason  # noqa: E402
from qsgw_lab.scalelab import METRICS_PORT, ScaleLab  # noqa: E402

# Issue 18's targets for 10,000 peers on these 2-core machines.
TARGETS = {"gateway_cpu_percent": 50.0, "gateway_rss_mb": 1024.0, "handshake_p99_ms": 100.0,
           "failures": 0, "status_query_ms": 1000.0, "config_load_s": 5.0,
           "sighup_one_peer_s": 1.0}

# A scrape, as Prometheus makes it; its first line is how long it took (ms).
SCRAPE = ("import sys, time, urllib.request; t = time.perf_counter(); body = "
          f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=60)"
          ".read().decode(); print((time.perf_counter() - t) * 1e3); sys.stdout.write(body)")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_cpu(sl: ScaleLab) -> dict[str, float]:
    """CPU seconds so far of the processes beside the hub (the load and its tunnel)."""
    procs = {"remote_peers": sl.remote_procs, "kme_sim": [sl.sim_proc],
             "wireguard_go": [sl.wg_proc]}
    out: dict[str, float] = {}
    for name, group in procs.items():
        total = 0.0
        for proc in group:
            if proc is not None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += cpu_seconds(proc.pid)
        out[name] = total
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kme_calls(sl: ScaleLab, scrapes: list[tuple[float, int]] | None = None) -> float:
    """The hub's KME calls so far (its metrics: every call is timed). `scrapes` gets
    (how long the scrape took in ms, its series)."""
    out = sl.lab.run(sl.ns, [sys.executable, "-c", SCRAPE], timeout=120, check=True).stdout
    took, _, text = (out if isinstance(out, str) else out.decode()).partition("\n")
    if scrapes is not None:
        scrapes.append((float(took), sum(1 for line in text.splitlines()
                                          if line and not line.startswith("#"))))
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("qsgw_kme_call_duration_seconds_count"))


def journal_commits(sl: ScaleLab, since: float, until: float) -> int:
    """Epochs the hub journalled in [since, until): one commit each (its key_ID row)."""
    db = sqlite3.connect(f"file:{sl.journal_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT COUNT(*) FROM key_ids WHERE consumed_at >= ? AND "
                         "consumed_at < ?", (since, until)).fetchone()
        return int(row[0])
    finally:
        db.close()


def journal_key_ids(sl: ScaleLab) -> list[str]:
    db = sqlite3.connect(f"file:{sl.journal_path}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute("SELECT key_id FROM key_ids")]
    finally:
        db.close()


def wait_status(sl: ScaleLab, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        assert sl.hub is not None
        if sl.hub.poll() is not None:
            raise RuntimeError(f"hub exited {sl.hub.returncode}: {tail(sl.log_path)}")
        try:
            return read_status(sl.status_socket, timeout_s=60)
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub status never answered: {tail(sl.log_path)}") from None
            time.sleep(1)


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def keyed(doc: dict[str, Any]) -> int:
    return sum(1 for p in doc["peers"]
               if p["epoch"] >= 1 and p["state"] not in ("starting", "blocked"))


def run(args: argparse.Namespace, workdir: Path, lab: NetnsLab) -> dict[str, Any]:
    remotes = args.remotes or max(2, math.ceil(args.peers / 2500))
    sl = ScaleLab(lab, workdir, args.peers, remotes, args.rekey, args.lifetime, args.warmup,
                  peers_dir=not args.single_file, pin=args.pin)
    t0 = time.monotonic()
    sl.build()
    build_s = time.monotonic() - t0
    sl.write_config()
    t0 = time.perf_counter()
    cfg = load_config(sl.config_path)  # what the daemon and `qsgw check` do first
    config_load_s = time.perf_counter() - t0
    assert len(cfg.peers) == args.peers
    del cfg
    # The remote sides listen before the hub initiates to them, and initiate once it is up.
    sl.start_remotes()
    started = time.monotonic()
    hub = sl.start_hub()
    wait_status(sl, 120 + args.peers / 50)
    sl.go_file.write_text("go\n")
    # Warm-up: every peer holds an epoch key (the remote sides start theirs within
    # --warmup seconds; the hub keys its own at once, 32 at a time).
    deadline = time.monotonic() + args.warmup + 180 + args.peers / 20
    while True:
        doc = wait_status(sl, 60)
        if keyed(doc) == args.peers:
            break
        if time.monotonic() > deadline:  # measured all the same, and said so
            break
        time.sleep(5)
    warmup_s = time.monotonic() - started
    keyed_after_warmup = keyed(doc)
    # The measured window.
    scrapes: list[tuple[float, int]] = []
    calls0, calls_t0 = kme_calls(sl, scrapes), time.monotonic()
    cpu0, wall0, unix0 = cpu_seconds(hub.pid), time.monotonic(), time.time()
    others0, busy0 = others_cpu(sl), machine_busy_s()
    rss = [rss_mb(hub.pid)]
    while time.monotonic() - wall0 < args.seconds:
        time.sleep(2)
        rss.append(rss_mb(hub.pid))
    cpu1, wall1, unix1 = cpu_seconds(hub.pid), time.monotonic(), time.time()
    others1, busy1 = others_cpu(sl), machine_busy_s()
    calls1, calls_t1 = kme_calls(sl, scrapes), time.monotonic()
    window = wall1 - wall0
    # Status with N peers, as an operator asks for it.
    status_ms = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--json", "--timeout",
                              "60", "-s", str(sl.status_socket)], capture_output=True, check=True)
        status_ms.append((time.perf_counter() - t0) * 1e3)
    final = json.loads(out.stdout)
    t0 = time.perf_counter()
    read_status(sl.status_socket, timeout_s=60)
    status_socket_ms = (time.perf_counter() - t0) * 1e3
    # SIGHUP: one peer more; the daemon logs how long the reload took and what it touched.
    sl.write_config(extra_peers=1)
    sighup_at = time.time()
    hub.send_signal(signal.SIGHUP)
    reload: dict[str, Any] | None = None
    deadline = time.monotonic() + 120
    while reload is None and time.monotonic() < deadline:
        time.sleep(0.5)
        reload = next((r for r in sl.log_records() if "reload_s" in r
                       and str(r.get("msg", "")).startswith("reloaded")), None)
    after_reload = wait_status(sl, 60)
    # From here on, handshakes cut by the shutdown are no failures (counted apart).
    stop_at = time.time()
    remote = sl.stop_remotes()
    hub_rc = sl.stop_hub()
    # What the hub's log says about the handshakes.
    took: list[float] = []
    by_side: dict[str, list[float]] = {}
    slow_at: list[float] = []  # when (s into the window) a handshake took over 1 s
    epochs_total = failures_total = failures_window = cut_at_stop = 0
    failure_reasons: dict[str, int] = {}
    for rec in sl.log_records():
        msg = str(rec.get("msg", ""))
        if "took_ms" in rec:
            epochs_total += 1
            at = _unix(rec["time"])
            if unix0 <= at < unix1:
                took.append(float(rec["took_ms"]))
                # The hub initiates to the even-numbered peers (scalelab.peer_doc).
                side = "initiated" if int(str(rec.get("peer", "br1"))[2:]) % 2 == 0 \
                    else "answered"
                by_side.setdefault(side, []).append(float(rec["took_ms"]))
                if float(rec["took_ms"]) > 1000:
                    slow_at.append(at - unix0)
        elif msg.startswith("handshake failed"):
            if _unix(rec["time"]) >= stop_at:
                cut_at_stop += 1
                continue
            failures_total += 1
            reason = msg.split("(", 1)[1].split(")", 1)[0] if "(" in msg else "?"
            failure_reasons[reason] = failure_reasons.get(reason, 0) + 1
            if unix0 <= _unix(rec["time"]) < unix1:
                failures_window += 1
    remote_failures = sum(int(r["failures"]) for r in remote.values())
    # No key reused: every key_ID the hub journalled once, and each remote side's
    # key_IDs (the other end of the same epochs) among them, used by one peer only.
    hub_ids = journal_key_ids(sl)
    remote_ids = [k for r in remote.values() for k in r["key_ids"]]
    remote_all = remote_ids + [k for r in remote.values() for k in r["unfinished_key_ids"]]
    reused = (len(hub_ids) - len(set(hub_ids))) + (len(remote_all) - len(set(remote_all)))
    # Of finished handshakes only: an unfinished one's INIT may never have reached the hub.
    unknown = len(set(remote_ids) - set(hub_ids))
    commits = journal_commits(sl, unix0, unix1)
    result: dict[str, Any] = {
        "peers": args.peers,
        "gateway_cpu_percent": round((cpu1 - cpu0) / window * 100, 1),
        "gateway_rss_mb": round(max(rss), 1),
        "handshake_p50_ms": _r(pct(took, 50)),
        "handshake_p99_ms": _r(pct(took, 99)),
        "epochs": len(took),
        "failures": failures_window + remote_failures,
        "kme_calls_per_s": round((calls1 - calls0) / (calls_t1 - calls_t0), 2),
        "journal_commits_per_s": round(commits / window, 2),
        "status_query_ms": round(statistics.median(status_ms), 1),
        "config_load_s": round(config_load_s, 3),
        "sighup_one_peer_s": None if reload is None else reload["reload_s"],
        # A Prometheus scrape of the hub (two, at the window's ends): time and series.
        "metrics_scrape_ms": round(max(t for t, _ in scrapes), 1),
        "metrics_series": scrapes[-1][1],
        "run": {
            "measured_s": round(window, 1), "warmup_s": round(warmup_s, 1),
            "build_s": round(build_s, 1), "rekey_interval_s": args.rekey,
            "remote_processes": remotes, "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg()[0],
            # Where the machine's CPU went over the window, in % of one core: on a
            # 2-core machine the load generator and the simulator share it with the hub.
            "cpu_percent": {
                "hub": round((cpu1 - cpu0) / window * 100, 1),
                **{k: round((others1[k] - others0[k]) / window * 100, 1) for k in others1},
                "machine": round((busy1 - busy0) / window * 100, 1),
                "machine_capacity": 100 * (os.cpu_count() or 1),
            },
        },
        "checks": {
            "peers_keyed_after_warmup": keyed_after_warmup,
            "peers_keyed_at_end": keyed(final),
            "peers_in_status_after_sighup": len(after_reload["peers"]),
            "sighup_log": None if reload is None else reload["msg"],
            "sighup_wall_s": None if reload is None else round(_unix(reload["time"])
                                                               - sighup_at, 3),
            "epochs_whole_run": epochs_total,
            "hub_failures_whole_run": failures_total, "hub_failure_reasons": failure_reasons,
            "handshakes_cut_at_shutdown": cut_at_stop + sum(sl.remote_cut.values()),
            "remote_failures": remote_failures, "remote_errors": sl.remote_errors,
            "remote_epochs": sum(int(r["epochs"]) for r in remote.values()),
            "remote_peers_without_epoch": sum(1 for r in remote.values() if r["epochs"] == 0),
            "key_ids_journalled": len(hub_ids), "key_ids_reused": reused,
            "remote_key_ids_unknown_to_hub": unknown, "hub_exit_code": hub_rc,
        },
        "parts": {
            "status_socket_ms": round(status_socket_ms, 1),
            # The hub's event-loop lag over the window's last minute (daemon.looplag).
            "hub_loop_lag_last_minute": final.get("loop_lag"),
            "uapi_set_all_peers_s": round(sl.figures["uapi_set_all_peers_s"], 3),
            "uapi_get_all_peers_ms": round(sl.figures["uapi_get_all_peers_ms"], 1),
            "status_doc_bytes": len(out.stdout),
            "handshake_ms_by_side": {
                side: {"n": len(v), "p50": _r(pct(v, 50)), "p99": _r(pct(v, 99))}
                for side, v in sorted(by_side.items())},
            # Over 1 s, by the minute of the window they ended in: bunching shows here.
            "slow_handshakes_by_minute": {
                str(m): sum(1 for t in slow_at if int(t // 60) == m)
                for m in sorted({int(t // 60) for t in slow_at})},
        },
        "targets": TARGETS,
        "tunnel": f"one wireguard-go interface with {args.peers} peers (UAPI, psk-only)",
        "config_layout": "gateway.yaml alone" if args.single_file
        else "gateway.yaml + peers.d/ (a file per peer)",
    }
    result["meets_targets"] = {
        k: (result[k] is not None and result[k] <= v) for k, v in TARGETS.items()}
    return result


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=__import__("datetime").UTC).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured window after warm-up (default: 1.25 rekey intervals)")
    parser.add_argument("--rekey", type=float, default=120.0, help="rekey interval, s")
    parser.add_argument("--lifetime", type=float, default=None, help="key lifetime, s")
    parser.add_argument("--warmup", type=float, default=None,
                        help="the remote sides start their first epochs within this (s)")
    parser.add_argument("--remotes", type=int, default=0, help="remote processes")
    parser.add_argument("--prefix", default="qsgwsc", help="network namespace prefix")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--pin", action="store_true",
                        help="hub and wireguard-go on CPU 0, simulator and remotes on the rest")
    parser.add_argument("--single-file", action="store_true",
                        help="all peers in gateway.yaml instead of one file each in peers.d")
    parser.add_argument("--keep", type=Path, default=None, help="copy the work dir's logs here")
    args = parser.parse_args()
    args.seconds = args.seconds if args.seconds is not None else 1.25 * args.rekey
    args.lifetime = args.lifetime if args.lifetime is not None else 2.5 * args.rekey
    args.warmup = args.warmup if args.warmup is not None else min(args.rekey / 2, 60.0)
    reason = netns_unavailable_reason()
    if reason:
        print(json.dumps({"error": f"needs network namespaces: {reason}"}))
        return 2
    # A run stopped with SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the lab's
    # exits remove its namespaces, wireguard-go and helper processes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="qsgw-scale-") as tmp, \
            NetnsLab(prefix=args.prefix) as lab:
        try:
            result = run(args, Path(tmp), lab)
        finally:
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).rglob("*.log"):
                    (args.keep / log.name).write_bytes(log.read_bytes()[-2_000_000:])
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
