"""`qsgw status`: the running daemon's peers, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.paths import DEFAULT_CONFIG_PATH

from .looplag import OVERLOADED_MS
from .status import read_status_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="gateway config, to find the status socket "
                        f"(default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("-s", "--socket", type=Path, default=None, help="the status socket")
    parser.add_argument("--json", action="store_true",
                        help="print the daemon's JSON document as it sent it (one line, keys "
                        "sorted; `| jq .` to read it)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the daemon's answer (default 5; a hub "
                        "with thousands of peers under load may need more)")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def _error(p: dict[str, Any]) -> str:
    # An error older than the installed key is history: --json keeps it.
    err, at, installed = p.get("last_error"), p.get("last_error_at"), p.get("installed_at")
    if not err or (installed is not None and at is not None and at < installed):
        return "-"
    return str(err)[:60]


def format_table(doc: dict[str, Any]) -> str:
    rows = [("PEER", "ROLE", "POLICY", "STATE", "EPOCH", "AGE", "SOURCES", "TUNNEL", "LAST ERROR")]
    for p in doc.get("peers", []):
        tunnel = p.get("tunnel") or {}
        rows.append((
            p["peer"], p["role"], p["policy"], p["state"], str(p["epoch"]), _age(p["key_age_s"]),
            "+".join(p["sources"]) or "-",
            _tunnel(p, tunnel),
            _error(p),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"gateway {doc.get('gateway')}  uptime {_age(doc.get('uptime_s'))}"
             + _ha_and_journal(doc) + _loop_lag(doc)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    # A down tunnel gets its whole reason, in words, on a line of its own.
    for p in doc.get("peers", []):
        if p.get("state") == "down":
            lines.append(f"  {p['peer']}: tunnel down: {p.get('tunnel_detail') or '?'}")
    if doc.get("journal_lost"):  # fail closed: no epoch until restored and restarted
        lines.append(f"ALARM journal_lost: {doc['journal_lost']}")
    if doc.get("control_flood"):
        lines.append("ALARM control_flood: refused control connections above the threshold")
    for a in doc.get("alarms", []):
        if a["alarm"] not in ("journal_lost", "control_flood"):  # said just above
            lines.append(f"ALARM {a['alarm']} ({a['severity']}) {a['subject']}: {a['detail']}")
    return "\n".join(lines)


def _loop_lag(doc: dict[str, Any]) -> str:
    """`  loop lag p99 12 ms` (daemon.looplag); from OVERLOADED_MS, overloaded."""
    lag = doc.get("loop_lag") or {}
    if lag.get("p99_ms") is None:
        return ""
    text = f"  loop lag p99 {lag['p99_ms']:.0f} ms"
    return text + (" (OVERLOADED: handshakes wait in line)"
                   if lag["p99_ms"] >= OVERLOADED_MS else "")


def _ha_and_journal(doc: dict[str, Any]) -> str:
    """`  role active (member a1, VIP 192.0.2.10)  journal postgresql ok`."""
    out = ""
    ha = doc.get("ha")
    if ha:
        out += (f"  role {doc.get('role')} (member {ha['member']}, "
                f"VIP {ha['virtual_address']}, takeovers {ha['takeovers']})")
    journal = doc.get("journal")
    if journal:
        out += f"  journal {journal['backend']} " + (
            "ok" if journal["healthy"] else f"UNAVAILABLE: {journal['detail']}")
    return out


def _tunnel(p: dict[str, Any], tunnel: dict[str, Any]) -> str:
    """live/pending/down from the liveness check, with the data plane's counters."""
    live = p.get("tunnel_live") or (("live" if tunnel.get("up") else "down") if tunnel else "?")
    rx, tx = p.get("rx_bytes"), p.get("tx_bytes")
    if rx is None or tx is None:
        return str(live)
    return f"{live} rx {_bytes(rx)} tx {_bytes(tx)}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n //= 1024
    return f"{n}GiB"


def run(args: argparse.Namespace) -> int:
    socket_path = args.socket
    if socket_path is None and args.config is None and not DEFAULT_CONFIG_PATH.exists():
        print(f"qsgw status: no socket given and no config at {DEFAULT_CONFIG_PATH}: use "
              "-c FILE (the gateway config, to find its status socket) or -s SOCKET",
              file=sys.stderr)
        return 2
    if socket_path is None:
        # Imported only here: the config models are most of the command's start-up.
        from gateway.config import ConfigError, load_config

        try:
            config = load_config(args.config or DEFAULT_CONFIG_PATH, check_files=False)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        socket_path = Path(config.gateway.status_socket)
    try:
        raw = read_status_bytes(socket_path, args.timeout)
    except OSError as exc:
        why = f"no answer within {args.timeout:g} s (--timeout)" if isinstance(
            exc, TimeoutError) else f"{exc.strerror or exc} (is the daemon running?)"
        print(f"qsgw status: cannot read {socket_path}: {why}", file=sys.stderr)
        return 1
    try:
        # --json passes the document through: with 10,000 peers it is ~6 MB, and
        # parsing and re-indenting it cost the caller more than the daemon's reply.
        doc = None if args.json and raw.strip() else json.loads(raw)
    except ValueError:
        print(f"qsgw status: {socket_path} answered no status document "
              "(is it a qsgw status socket?)", file=sys.stderr)
        return 1
    if doc is None:
        sys.stdout.buffer.write(raw if raw.endswith(b"\n") else raw + b"\n")
        sys.stdout.flush()
    else:
        print(format_table(doc))
    return 0
