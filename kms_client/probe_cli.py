"""`qsgw kms probe`: run the ETSI GS QKD 014 conformance probe against a KME pair.

    qsgw kms probe --endpoints STATE/endpoints.json --master SAE_A --slave SAE_B [--json]
    qsgw kms probe --master SAE_A --master-url URL --master-kme-id ID --master-cert F
                   --master-key F --slave SAE_B --slave-url ... --ca CA [--tls-verify kme-id]

Exit status 0 when every check passed, 1 when any failed, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from kms_client._errors import KmsError
from kms_client._tls import VERIFY_MODES, TlsOptions
from kms_client.probe import Probe, Sae, render


class ProbeUsageError(Exception):
    """The command line or the endpoints file cannot be used."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoints", type=Path, help="endpoints.json (as the simulator writes)")
    p.add_argument("--ca", type=Path, help="CA file that issued the KME certificates")
    for role in ("master", "slave"):
        p.add_argument(f"--{role}", required=True, help=f"the {role} SAE ID")
        p.add_argument(f"--{role}-url", help=f"base URL of the {role} SAE's KME")
        p.add_argument(f"--{role}-kme-id", help=f"KME ID of the {role} SAE's KME (its CN)")
        p.add_argument(f"--{role}-cert", type=Path, help=f"the {role} SAE's certificate")
        p.add_argument(f"--{role}-key", type=Path, help=f"the {role} SAE's private key")
    p.add_argument("--extra-slave", help="endpoints file: a second slave SAE for multicast")
    p.add_argument("--intruder", help="endpoints file: an SAE not named in enc_keys (401)")
    p.add_argument("--tls-verify", choices=VERIFY_MODES, default="hostname")
    p.add_argument("--cert-sha256", help="pin: the KME certificate's SHA-256")
    p.add_argument("--spki-sha256", help="pin: the KME key's SPKI SHA-256")
    p.add_argument("--ciphers", help="OpenSSL cipher string for TLS 1.2 (legacy KMEs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _tls(args: argparse.Namespace) -> TlsOptions:
    return TlsOptions(verify=args.tls_verify, cert_sha256=args.cert_sha256,
                      spki_sha256=args.spki_sha256, ciphers=args.ciphers)


def _from_file(data: Any, sae: str, tls: TlsOptions) -> Sae:
    try:
        entry = data["saes"][sae]
        kme_id = entry["kme"]
        kme = data["kmes"][kme_id]
        return Sae(sae, str(kme["url"]), str(kme_id), Path(kme["ca"]), Path(entry["cert"]),
                   Path(entry["key"]), tls)
    except (KeyError, TypeError):
        raise ProbeUsageError(f"the endpoints file has no usable entry for SAE {sae!r}") from None


def _sides(args: argparse.Namespace) -> tuple[Sae, Sae, Sae | None, Sae | None]:
    tls = _tls(args)
    if args.endpoints is not None:
        try:
            data = json.loads(args.endpoints.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProbeUsageError(f"{args.endpoints}: cannot read JSON ({exc})") from None
        master, slave = _from_file(data, args.master, tls), _from_file(data, args.slave, tls)
        saes = data.get("saes", {}) if isinstance(data, dict) else {}
        pairs = {tuple(p) for p in data.get("pairs", []) if isinstance(p, list)}
        extra_id = args.extra_slave or next(
            (s for s in saes if s not in (master.sae_id, slave.sae_id)
             and (master.sae_id, s) in pairs), None)
        intruder_id = args.intruder or next(
            (s for s, e in saes.items() if s not in (master.sae_id, slave.sae_id)
             and isinstance(e, dict) and e.get("kme") == slave.kme_id), None)
        extra = _from_file(data, extra_id, tls) if extra_id else None
        intruder = _from_file(data, intruder_id, tls) if intruder_id else None
        return master, slave, extra, intruder
    sides = []
    for role in ("master", "slave"):
        values = {k: getattr(args, f"{role}_{k}") for k in ("url", "kme_id", "cert", "key")}
        missing = [f"--{role}-{k.replace('_', '-')}" for k, v in values.items() if not v]
        if missing or args.ca is None:
            raise ProbeUsageError("missing " + ", ".join(missing + ([] if args.ca else ["--ca"]))
                                  + " (or give --endpoints FILE)")
        sides.append(Sae(getattr(args, role), values["url"], values["kme_id"], args.ca,
                         values["cert"], values["key"], tls))
    return sides[0], sides[1], None, None


async def _run(args: argparse.Namespace) -> int:
    master, slave, extra, intruder = _sides(args)
    report = await Probe(master, slave, timeout=args.timeout, intruder=intruder,
                         extra_slave=extra).run()
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    return 1 if report.failed else 0


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        return asyncio.run(_run(args))
    except (ProbeUsageError, KmsError) as exc:
        print(f"qsgw kms probe: {exc}", file=sys.stderr)
        return 2
