"""`qsgw run -c FILE`: validate the config, then run the daemon until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from gateway.fsguard import FileSafetyError
from gateway.identity import IdentityError
from gateway.journal import JournalError
from gateway.telemetry.audit_records import AuditError

STARTUP_ERRORS = (FileSafetyError, IdentityError, JournalError, AuditError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"gateway config (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default=None,
                        help="override telemetry.logging.format")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    from gateway.doctor import blockers

    # Refuse a tunnel type this machine cannot run, naming the part (as `qsgw doctor`).
    missing = blockers(config)
    if missing:
        for finding in missing:
            print(f"qsgw run: cannot run this config's tunnels: {finding}", file=sys.stderr)
        print(f"qsgw run: see `qsgw doctor -c {args.config}`", file=sys.stderr)
        return 1
    from gateway.telemetry import configure_logging

    from .app import GatewayDaemon

    logging_cfg = config.telemetry.logging
    configure_logging(logging_cfg.level.upper(), args.log_format or logging_cfg.format)
    # httpx logs every request at INFO; the daemon's own KME telemetry says more.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    daemon = GatewayDaemon(args.config, config)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(daemon.run_forever())
    except STARTUP_ERRORS as exc:
        # Refused to start (unsafe files, a lost journal...): the message says the fix.
        print(f"qsgw run: {exc}", file=sys.stderr)
        logging.getLogger("qsgw.daemon").error("refused to start: %s", exc)
        return 1
    return 0
