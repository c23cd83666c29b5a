"""`qsgw journal show|export|set-epoch`: read the journal, and raise an epoch after a restore.

`set-epoch` is for an operator restoring service after a journal was lost or
restored from an older backup (the peers refuse epochs not above what they saw):
it only ever raises an epoch, never to below what the state dir's signed record
holds, writes an audit record, and updates the record. Run it with the daemon
stopped: the daemon holds the journal and the audit chain.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from gateway.fsguard import FileSafetyError
from gateway.identity import IdentityError, LocalIdentity
from gateway.journal import MAX_EPOCH, Journal, JournalError
from gateway.journal_guard import read_record, write_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"gateway config (default {DEFAULT_CONFIG_PATH})")
    # -c also after the action, as `qsgw run` prints it (`qsgw journal set-epoch -c ...`).
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS,
                       help="gateway config (as before the action)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("show", parents=[after],
                   help="each peer's last epoch, and what the signed record says")
    sub.add_parser("export", parents=[after],
                   help="the journal as JSON (epochs and consumed key_IDs)")
    se = sub.add_parser("set-epoch", parents=[after],
                        help="raise a peer's epoch (never lowers it)")
    se.add_argument("--peer", required=True, help="the peer's gateway ID")
    se.add_argument("--epoch", required=True, type=int, help="the new last epoch")
    se.add_argument("--create", action="store_true",
                    help="start a new, empty journal when it is missing (lost for good)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ConfigError, JournalError, IdentityError, FileSafetyError, OSError) as exc:
        print(f"qsgw journal: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.journal.backend == "postgresql":
        return _run_shared(args, cfg)
    state_dir = Path(cfg.gateway.state_dir)
    path = state_dir / "journal.db"
    identity = LocalIdentity.load(Path(cfg.gateway.identity_dir))
    recorded = read_record(path, identity.public)
    if args.action == "set-epoch":
        return _set_epoch(args, cfg, path, identity, recorded or {})
    if not path.exists():
        print(f"qsgw journal: {path} does not exist"
              + (f" (the record says it did: {recorded})" if recorded else ""), file=sys.stderr)
        return 1
    with Journal(path) as j:
        epochs = j.epochs()
        if args.action == "export":
            doc: dict[str, Any] = {"journal": str(path), "epochs": epochs,
                                   "recorded_epochs": recorded, "key_ids": j.key_ids()}
            print(json.dumps(doc, indent=2, sort_keys=True))
            return 0
        count = len(j.key_ids())
    print(f"journal {path}: {count} QKD key_IDs consumed")
    for peer in sorted(set(epochs) | set(recorded or {})):
        rec = (recorded or {}).get(peer)
        note = "" if rec is None or rec <= epochs.get(peer, 0) else "  BEHIND THE RECORD"
        print(f"  {peer:<24} epoch {epochs.get(peer, 0):<12} recorded {rec}{note}")
    return 0


def _set_epoch(args: argparse.Namespace, cfg: Any, path: Path, identity: LocalIdentity,
               recorded: dict[str, int]) -> int:
    if _daemon_answers(cfg.gateway.status_socket):
        print(f"qsgw journal: {cfg.gateway.status_socket} answers: stop the daemon first "
              "(it holds the journal and the audit chain)", file=sys.stderr)
        return 1
    if args.peer not in {p.id for p in cfg.peers}:
        print(f"qsgw journal: {args.peer} is not a configured peer", file=sys.stderr)
        return 1
    if not path.exists() and not args.create:
        print(f"qsgw journal: {path} is missing; restore it from backup, or add --create "
              "to start a new one", file=sys.stderr)
        return 1
    floor = recorded.get(args.peer, 0)
    if not 1 <= args.epoch <= MAX_EPOCH or args.epoch < floor:
        print(f"qsgw journal: refusing epoch {args.epoch} for {args.peer}: it must be in "
              f"{max(1, floor)}..{MAX_EPOCH} (the signed record holds {floor})", file=sys.stderr)
        return 1
    with Journal(path) as j:
        old = j.last_epoch(args.peer)
        if args.epoch <= old:
            print(f"qsgw journal: refusing to lower or keep {args.peer}'s epoch: the journal "
                  f"holds {old}, asked {args.epoch}", file=sys.stderr)
            return 1
        j.record_epoch(args.peer, args.epoch)
        write_record(path, {**recorded, **j.epochs()}, identity)
    _audit(cfg, identity, args.peer, old, args.epoch)
    print(f"{args.peer}: epoch {old} -> {args.epoch}; the next handshake uses {args.epoch + 1}")
    return 0


def _run_shared(args: argparse.Namespace, cfg: Any) -> int:
    """The PostgreSQL journal (an HA pair's): show and export read the database; an
    epoch is raised there too, with the same refusals (never lowered)."""
    from gateway.journal_pg import PgJournal

    with PgJournal(cfg.journal.conninfo, cfg.gateway.id,
                   member=cfg.ha.member if cfg.ha else cfg.gateway.id,
                   password_file=cfg.journal.password_file) as j:
        if args.action == "set-epoch":
            old = j.last_epoch(args.peer)
            if args.peer not in {p.id for p in cfg.peers} or not old < args.epoch <= MAX_EPOCH:
                print(f"qsgw journal: refusing epoch {args.epoch} for {args.peer}: it must be a "
                      f"configured peer's, above {old}", file=sys.stderr)
                return 1
            j.record_epoch(args.peer, args.epoch)
            _audit(cfg, LocalIdentity.load(Path(cfg.gateway.identity_dir)), args.peer, old,
                   args.epoch)
            print(f"{args.peer}: epoch {old} -> {args.epoch}; the next handshake uses "
                  f"{args.epoch + 1}")
            return 0
        epochs, key_ids = j.epochs(), j.key_ids()
    if args.action == "export":
        print(json.dumps({"journal": "postgresql", "epochs": epochs, "key_ids": key_ids},
                         indent=2, sort_keys=True))
        return 0
    print(f"journal postgresql ({cfg.gateway.id}): {len(key_ids)} QKD key_IDs consumed")
    for peer in sorted(epochs):
        print(f"  {peer:<24} epoch {epochs[peer]}")
    return 0


def _daemon_answers(socket_path: Path) -> bool:
    from gateway.daemon.status import read_status

    try:
        read_status(socket_path, timeout_s=2)
    except (OSError, ValueError):
        return False
    return True


def _audit(cfg: Any, identity: LocalIdentity, peer: str, old: int, new: int) -> None:
    from gateway.telemetry.setup import build_telemetry

    tel = build_telemetry(cfg, identity)
    assert tel.audit is not None
    try:
        tel.audit.append({"type": "journal_set_epoch", "gateway": cfg.gateway.id, "peer": peer,
                          "old_epoch": old, "new_epoch": new, "operator": getpass.getuser()})
    finally:
        tel.audit.close()
