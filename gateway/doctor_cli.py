"""`qsgw doctor [-c FILE] [--json] [--crypto]`: what this machine lacks, and what fixes it.

Exit status: 0 when everything `make setup` installs is there (kernel modules,
a broker, the clock and file modes are reported but are the operator's); 1 when
something setup installs is missing (run `make setup`); 2 for a bad config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gateway import doctor
from gateway.doctor_finding import Finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=None,
                        help="check what this config needs (default: every feature)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--crypto", action="store_true",
                        help="also print the crypto inventory (algorithms and where they are used)")


def format_table(findings: Sequence[Finding]) -> str:
    rows = [("CHECK", "STATUS", "DETAIL", "FIX")]
    rows += [(f.check, f.status, f.detail, f.fix if not f.ok else "") for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)), r[3]]).rstrip()
        for r in rows
    )


def _crypto_inventory(as_json: bool) -> str:
    # Imported here: the inventory loads every provider (liboqs included).
    from gateway.crypto.inventory_cli import report

    return report(as_json=as_json)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        from gateway.config import ConfigError, load_config

        try:
            # File modes are the doctor's own checks: reported, not refused.
            cfg = load_config(args.config, check_files=False)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            print(f"qsgw doctor: {args.config} does not load; fix it (qsgw check -c "
                  f"{args.config}) or run `qsgw doctor` without -c", file=sys.stderr)
            return 2
        findings = doctor.for_config(cfg)
    else:
        findings = doctor.everything()
    gaps = doctor.setup_gaps(findings)
    if args.json:
        doc: dict[str, object] = {"findings": [f.as_dict() for f in findings],
                                  "setup_complete": not gaps}
        if args.crypto:
            doc["crypto"] = json.loads(_crypto_inventory(as_json=True))
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(findings))
        others = [f for f in findings if not f.ok and f not in gaps]
        if gaps:
            print(f"\n{len(gaps)} missing that `make setup` installs: "
                  + ", ".join(f.check for f in gaps))
        if others:
            print(f"{len(others)} other gap(s), not fatal (kernel modules, broker, clock, files, "
                  "or a setup step still to come): "
                  + ", ".join(f.check for f in others))
    if args.crypto and not args.json:
        print(_crypto_inventory(as_json=False))
    return 1 if gaps else 0
