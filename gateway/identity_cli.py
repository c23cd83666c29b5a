"""`qsgw keygen --out DIR`: make a gateway identity and print its public half
(`--show`: print the public half of the identity already in DIR, keys unchanged)."""

from __future__ import annotations

import argparse
import sys

from gateway.identity import IdentityError, LocalIdentity, PublicIdentity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the private keys (0600)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing identity")
    parser.add_argument("--show", action="store_true",
                        help="make no keys: print (and rewrite identity.pub for) the identity "
                        "in --out, e.g. to get the checksummed form of an old identity")


def fingerprint_line(public: PublicIdentity) -> str:
    """The form `keygen` and `check` both print, to compare by eye."""
    return f"fingerprint {public.fingerprint()}"


def run(args: argparse.Namespace) -> int:
    try:
        if args.show:
            identity = LocalIdentity.load(args.out)
            identity.save_public(args.out)
        else:
            identity = LocalIdentity.generate()
            identity.save(args.out, force=args.force)
    except IdentityError as exc:
        print(f"qsgw keygen: {exc}", file=sys.stderr)
        return 1
    public = identity.public
    print(f"# {fingerprint_line(public)}; paste into the peer's config:")
    print(public.to_text())
    return 0
