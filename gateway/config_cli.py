"""`qsgw check`: validate a gateway config without running anything."""

from __future__ import annotations

import argparse
import sys

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, GatewayConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=str(DEFAULT_CONFIG_PATH),
        help=f"the gateway config (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--no-file-checks",
        action="store_true",
        help="do not check that key, certificate and identity files exist with safe modes "
        "(for a config prepared before its files, e.g. when building an image)",
    )


def summary(cfg: GatewayConfig) -> str:
    """One line: the gateway and its peers with their tunnel types."""
    peers = ", ".join(f"{p.id}: {p.tunnel.type}" for p in cfg.peers)
    n = len(cfg.peers)
    return f"OK: {cfg.gateway.id}, {n} peer{'' if n == 1 else 's'} ({peers})"


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, check_files=not args.no_file_checks)
    except ConfigError as exc:
        for issue in exc.errors:
            print(issue, file=sys.stderr)
        n = len(exc.errors)
        print(f"{args.config}: {n} error{'' if n == 1 else 's'}", file=sys.stderr)
        return 1
    print(summary(cfg))
    return 0
