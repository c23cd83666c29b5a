"""The `qsgw` command line: one subcommand per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``
so that `qsgw check` does not pay for importing the daemon, and a missing
optional dependency only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "kme-sim": ("kms_client.sim.cli", "run the ETSI GS QKD 014 KME simulator"),
    "kms": ("kms_client.admin_cli", "query a KME as an SAE (status, fetch, probe)"),
    "keygen": ("gateway.identity_cli", "make a gateway identity (Ed25519 + ML-DSA-65)"),
    "check": ("gateway.config_cli", "validate a gateway config without running"),
    "run": ("gateway.daemon.cli", "run the gateway daemon"),
    "status": ("gateway.daemon.status_cli", "show the running daemon's peers"),
    "audit": ("gateway.telemetry.audit_cli", "verify or show the audit trail"),
    "doctor": ("gateway.doctor_cli", "what this machine lacks for a config (or every feature)"),
    "firewall": ("gateway.firewall_cli", "print the default-deny nftables ruleset for a config"),
    "journal": ("gateway.journal_cli", "show the journal; raise an epoch after a restore"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qsgw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module_name)
        # Arguments are added lazily below, for the chosen command only.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass only finds the command; the command module then adds its own
    # arguments and we parse again, so unrelated imports never happen.
    if not args_list or args_list[0] in ("-h", "--help") or args_list[0] not in COMMANDS:
        parser.parse_args(args_list)
        return 2
    name = args_list[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"qsgw {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(args_list[1:])
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
