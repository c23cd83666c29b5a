"""`qsgw audit verify|show`: check the hash chain, or list records by peer and time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.telemetry.audit_records import AuditError, parse_time
from gateway.telemetry.audit_sign import (
    AuditSignatureError,
    AuditVerifier,
    HybridVerifier,
    load_verifier,
)
from gateway.telemetry.audit_verify import filter_records, iter_records, verify_files
from gateway.telemetry.checkpoint import check_checkpoint, quarantined
from gateway.telemetry.key_origin import describe_origin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    sub.required = True
    v = sub.add_parser("verify", help="check the hash chain (and signatures) of audit files")
    v.add_argument("files", nargs="+", type=Path, metavar="FILE")
    v.add_argument(
        "--identity",
        metavar="ID",
        help="the gateway's public identity, to check rotated files' .sig: a qsgw-id-v2: "
        "string, a file holding one, or a `qsgw keygen` directory",
    )
    v.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a signed checkpoint (from beside the trail, the broker or the SIEM): the trail "
        "must reach it unchanged (needs --identity)",
    )
    v.add_argument(
        "--checkpoint-from-broker",
        type=Path,
        metavar="CONFIG",
        help="fetch the newest checkpoint retained on the MQTT broker of this gateway config "
        "(its telemetry.mqtt settings and gateway id); needs --identity",
    )
    v.add_argument(
        "--partial",
        action="store_true",
        help="the oldest files were archived: the chain may start after seq 0",
    )
    v.add_argument(
        "--ed25519-pub", type=Path, metavar="FILE", help="Ed25519 public key (PEM or raw)"
    )
    v.add_argument(
        "--mldsa-pub", type=Path, metavar="FILE", help="ML-DSA-65 public key (PEM or raw)"
    )
    s = sub.add_parser("show", help="list audit records, filtered by peer and time")
    s.add_argument("files", nargs="+", type=Path, metavar="FILE")
    s.add_argument("--peer", help="only records about this peer")
    s.add_argument("--since", help="only records at or after this time (ISO 8601, UTC if no zone)")
    s.add_argument("--until", help="only records at or before this time")
    s.add_argument("--json", action="store_true", help="print the records as JSON lines")


def _verifier(args: argparse.Namespace) -> AuditVerifier | None:
    ed: Path | None = args.ed25519_pub
    ml: Path | None = args.mldsa_pub
    if args.identity is not None:
        return load_verifier(args.identity)
    if ed is None and ml is None:
        return None
    if ed is None or ml is None:
        raise AuditSignatureError("give both --ed25519-pub and --mldsa-pub (or --identity)")
    return HybridVerifier.from_files(ed, ml)


def _verify(args: argparse.Namespace) -> int:
    try:
        verifier = _verifier(args)
        result = verify_files(args.files, verifier, partial=args.partial)
    except (AuditError, AuditSignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems: list[str] = []
    if args.checkpoint is not None:
        try:
            doc = json.loads(args.checkpoint.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
            return 2
        problems = check_checkpoint(doc, iter_records(args.files), verifier)
    elif args.checkpoint_from_broker is not None:
        from gateway.config import ConfigError
        from gateway.telemetry.checkpoint_fetch import CheckpointFetchError, fetch_for_config

        try:
            doc = fetch_for_config(args.checkpoint_from_broker)
        except (ConfigError, CheckpointFetchError, ValueError, OSError) as exc:
            print(f"error: checkpoint from the broker: {exc}", file=sys.stderr)
            return 2
        print(f"checkpoint from the broker: {doc.get('records')} records, "
              f"written {doc.get('time')}")
        problems = check_checkpoint(doc, iter_records(args.files), verifier)
    for b in result.breaks:
        print(b)
    for problem in problems:
        print(problem)
    for cut in quarantined(args.files):
        print(f"NOTE: quarantined cut line (a crash mid-write): {cut} "
              f"({cut.stat().st_size} bytes)")
    if problems:
        print(f"FAILED: {len(problems)} checkpoint problem(s), {len(result.breaks)} chain "
              f"problem(s) in {result.records} records")
        return 1
    signed = f", {result.signed_files} signed files verified" if verifier is not None else ""
    if result.ok:
        print(f"OK: {result.records} records in {result.files} files, chain intact{signed}")
        return 0
    print(f"FAILED: {len(result.breaks)} problem(s) in {result.records} records{signed}")
    return 1


def _show(args: argparse.Namespace) -> int:
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError:
        print(
            "error: --since/--until must be ISO 8601 times, e.g. 2026-01-31T12:00:00Z",
            file=sys.stderr,
        )
        return 2
    try:
        recs = filter_records(iter_records(args.files), peer=args.peer, since=since, until=until)
        for rec in recs:
            if args.json:
                print(json.dumps(rec, sort_keys=True))
                continue
            # Where each QKD key came from: one indented line per key (the
            # key_IDs are on those lines, so qkd_key_ids is not repeated).
            origins = rec.get("qkd_keys")
            skip = {"seq", "time", "prev", "hash", "type", "peer", "gateway"}
            if isinstance(origins, list):
                skip |= {"qkd_keys", "qkd_key_ids"}
            extra = {k: v for k, v in rec.items() if k not in skip}
            detail = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(extra.items()))
            print(
                f"{rec.get('time')} #{rec.get('seq')} {rec.get('type')} "
                f"peer={rec.get('peer', '-')} {detail}".rstrip()
            )
            for origin in origins if isinstance(origins, list) else []:
                print(f"    {describe_origin(origin)}")
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return _verify(args)
    return _show(args)
