"""`qsgw check`: validate a gateway config without running anything."""

from __future__ import annotations

import argparse
import sys

from gateway.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    load_config,
)

_LIBOQS_MARK = "from the liboqs provider, which is not available"
LIBOQS_ADVICE = (
    "liboqs is not installed here: `make setup` builds it; elsewhere install liboqs "
    "and `pip install 'qsgw[oqs]'` (`qsgw doctor` checks it)"
)


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


def fingerprints(cfg: GatewayConfig) -> list[str]:
    """Each peer's identity fingerprint, in the form `qsgw keygen` printed it."""
    from gateway.identity import PublicIdentity
    from gateway.identity_cli import fingerprint_line

    return [f"  peer {p.id}: {fingerprint_line(PublicIdentity.from_text(p.identity))}"
            for p in cfg.peers]


def _short_liboqs(issue: ConfigIssue) -> tuple[ConfigIssue, bool]:
    """The issue without the install advice for liboqs (printed once, at the end)."""
    at = issue.message.find(_LIBOQS_MARK)
    if at < 0:
        return issue, False
    head = issue.message[:at] + "from the liboqs provider, which is not installed (see below)"
    return issue._replace(message=head), True


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, check_files=not args.no_file_checks)
    except ConfigError as exc:
        needs_liboqs = False
        for issue in exc.errors:
            short, about_liboqs = _short_liboqs(issue)
            needs_liboqs |= about_liboqs
            print(short, file=sys.stderr)
        if needs_liboqs:
            print(LIBOQS_ADVICE, file=sys.stderr)
        n = len(exc.errors)
        print(f"{args.config}: {n} error{'' if n == 1 else 's'}", file=sys.stderr)
        return 1
    print(summary(cfg))
    for line in fingerprints(cfg):
        print(line)
    return 0
