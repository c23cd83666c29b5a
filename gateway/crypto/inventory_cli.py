"""The crypto inventory as text or JSON, for `qsgw doctor --crypto [--json]`."""

from __future__ import annotations

import argparse
import json

from gateway.crypto.inventory import inventory, library_versions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def report(as_json: bool = False) -> str:
    """The inventory as text (a table) or JSON; what `qsgw doctor --crypto` prints."""
    versions = library_versions()
    rows = [r.as_dict() for r in inventory()]
    if as_json:
        return json.dumps({"libraries": versions, "algorithms": rows}, indent=2)
    lines = ["libraries:"]
    lines += [f"  {k}: {v}" for k, v in versions.items()]
    lines.append("algorithms (suite, role, algorithm, parameter set, provider, status):")
    for r in rows:
        lines.append(f"  {r['suite']:<17} {r['role']:<9} {r['algorithm']:<26} "
                     f"{r['parameter_set']:<40} {r['provider']:<12} {r['status']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(report(as_json=args.json))
    return 0
