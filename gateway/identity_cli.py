"""`qsgw keygen --out DIR`: make a gateway identity and print its public half."""

from __future__ import annotations

import argparse
import sys

from gateway.identity import IdentityError, LocalIdentity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the private keys (0600)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing identity")


def run(args: argparse.Namespace) -> int:
    identity = LocalIdentity.generate()
    try:
        identity.save(args.out, force=args.force)
    except IdentityError as exc:
        print(f"qsgw keygen: {exc}", file=sys.stderr)
        return 1
    public = identity.public
    print(f"# fingerprint {public.fingerprint()}; paste into the peer's config:")
    print(public.to_text())
    return 0
