"""`qsgw keygen --out DIR`: make a gateway identity and print its public half
(`--show`: print the public half of the identity already in DIR, keys unchanged;
`--static-kem ALG`: also make the gateway's static McEliece key pair in DIR and
print the pin for the peer's config)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.identity import (
    ED25519_FILE,
    MLDSA65_FILE,
    IdentityError,
    LocalIdentity,
    PublicIdentity,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the private keys (0600)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing identity")
    parser.add_argument("--show", action="store_true",
                        help="make no keys: print (and rewrite identity.pub for) the identity "
                        "in --out, e.g. to get the checksummed form of an old identity")
    parser.add_argument("--static-kem", metavar="ALG",
                        help="also make this gateway's static KEM key pair for the McEliece "
                        "suites (a suite such as mceliece460896f, or Classic-McEliece-460896f); "
                        "an identity already in --out is kept, --force replaces the static key")


def fingerprint_line(public: PublicIdentity) -> str:
    """The form `keygen` and `check` both print, to compare by eye."""
    return f"fingerprint {public.fingerprint()}"


def run(args: argparse.Namespace) -> int:
    static = getattr(args, "static_kem", None)
    if static and not args.show:
        # Checked before any key is made, so a refusal leaves DIR as it was.
        from gateway import static_kem

        try:
            static = static_kem.static_kem_of(static)
            existing = [str(p) for p in static_kem.key_files(args.out, static) if p.exists()]
        except static_kem.StaticKemError as exc:
            print(f"qsgw keygen: {exc}", file=sys.stderr)
            return 1
        if existing and not args.force:
            print(f"qsgw keygen: refusing to overwrite {', '.join(existing)} (use --force)",
                  file=sys.stderr)
            return 1
    try:
        if args.show or (static and _has_identity(args.out)):
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
    return _static_kem(args.out, static, args.force) if static and not args.show else 0


def _has_identity(out: str) -> bool:
    return all((Path(out) / name).exists() for name in (ED25519_FILE, MLDSA65_FILE))


def _static_kem(out: str, name: str, force: bool) -> int:
    """Make the static pair (``name`` already resolved) and print the peer's pin."""
    from gateway import static_kem

    try:
        start = time.process_time()
        public_file, digest = static_kem.generate(out, name, force=force)
        cpu_ms = (time.process_time() - start) * 1000
    except static_kem.StaticKemError as exc:
        print(f"qsgw keygen: {exc}", file=sys.stderr)
        return 1
    secret = public_file.with_suffix(".key")
    print(f"# {name} static key made in {cpu_ms:.0f} ms CPU; secret {secret} (0600). "
          f"Copy {public_file} to the peer and add to its peer entry for this gateway:")
    print(f"static_kem: {{public_file: {public_file.name}, sha256: {digest}}}")
    return 0
