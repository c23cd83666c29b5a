"""`qsgw firewall`: print the default-deny nftables ruleset for a gateway config."""

from __future__ import annotations

import argparse
import socket
import sys

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from gateway.firewall import ruleset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=str(DEFAULT_CONFIG_PATH),
                        help=f"the gateway config (default: {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--no-file-checks", action="store_true",
                        help="do not check the config's key and certificate files")


def _resolve(host: str) -> list[str]:
    # Names are resolved once, now: the ruleset holds addresses (prefer IP literals).
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise SystemExit(f"qsgw firewall: cannot resolve {host!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, check_files=not args.no_file_checks)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        return 1
    sys.stdout.write(ruleset(cfg, _resolve))
    return 0
