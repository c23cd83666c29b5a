"""`qsgw kms status|fetch`: query a KME as a given SAE, for operators and for debugging.

    qsgw kms status --slave SAE_B  --endpoints STATE/endpoints.json --sae SAE_A
    qsgw kms fetch  --slave SAE_B  [--number N] [--size BITS] ...    (enc_keys)
    qsgw kms fetch  --master SAE_A --key-id ID [--key-id ID ...]     (dec_keys)

    qsgw kms probe  --endpoints FILE --master SAE_A --slave SAE_B    (conformance probe)

Connection: ``--url URL [--url URL2 ...] --kme-id ID --ca FILE --cert FILE --key FILE
--sae SAE_ID``, or ``--endpoints FILE --sae SAE_ID`` reading the simulator's
endpoints.json (there an SAE's ``kme`` may list several KME IDs and a KME may give
``urls``: every URL is an endpoint, tried in order with failover, as the daemon does).
``--attempts`` is per endpoint; ``--deadline`` bounds the whole command (retries go on
with backoff until then, and dec_keys waits that long for late keys). Keys are printed
only with ``--show-keys``; otherwise key IDs only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms_client._client import KmeClient, KmeEndpoint, Method, RetryPolicy, SaeCredentials
from kms_client._dialects import DIALECTS
from kms_client._errors import KmeInvalidArgument, KmeUnavailable, KmsError
from kms_client._models import KeyContainer
from kms_client._tls import VERIFY_MODES, TlsOptions


class CliUsageError(Exception):
    """The command line or the endpoints file cannot be used; exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument("--sae", required=True, help="this SAE's ID (the caller)")
    conn.add_argument("--endpoints", type=Path, help="the simulator's endpoints.json")
    conn.add_argument(
        "--url", action="append", default=[], help="KME base URL (repeat for failover)"
    )
    conn.add_argument("--kme-id", help="KME ID expected as the server certificate's CN")
    conn.add_argument("--ca", type=Path, help="CA file that issued the KME certificate")
    conn.add_argument("--cert", type=Path, help="this SAE's client certificate")
    conn.add_argument("--key", type=Path, help="this SAE's client private key")
    conn.add_argument("--timeout", type=float, default=5.0, help="seconds per call (5)")
    conn.add_argument("--attempts", type=int, default=None,
                      help="attempts per endpoint (3; with --deadline: until the deadline)")
    conn.add_argument("--deadline", type=float, default=None,
                      help="seconds for the whole command, retries and late dec_keys included")
    conn.add_argument("--tls-verify", choices=VERIFY_MODES, default="hostname",
                      help="how the KME certificate is verified (hostname)")
    conn.add_argument("--cert-sha256", help="with --tls-verify cert-sha256: the pin")
    conn.add_argument("--spki-sha256", help="with --tls-verify spki-sha256: the pin")
    conn.add_argument("--ciphers", help="OpenSSL cipher string for TLS 1.2 (legacy KMEs)")
    conn.add_argument("--dialect", choices=list(DIALECTS), default="etsi",
                      help="how the KME's error answers are read (etsi)")
    common.add_argument("--json", action="store_true", help="print JSON")

    sub = parser.add_subparsers(dest="kms_command", metavar="{status,fetch,probe}")
    sub.required = True
    from kms_client import probe_cli

    probe = sub.add_parser("probe", help="ETSI GS QKD 014 conformance probe of a KME pair")
    probe_cli.add_arguments(probe)
    status = sub.add_parser("status", parents=[common], help="link status towards a slave SAE")
    status.add_argument("--slave", required=True, help="the slave SAE ID")

    fetch = sub.add_parser(
        "fetch", parents=[common], help="enc_keys (--slave) or dec_keys (--master --key-id)"
    )
    role = fetch.add_mutually_exclusive_group(required=True)
    role.add_argument("--slave", help="enc_keys: the slave SAE to share new keys with")
    role.add_argument("--master", help="dec_keys: the master SAE that obtained the keys")
    fetch.add_argument("--number", type=int, default=1, help="enc_keys: how many keys (1)")
    fetch.add_argument("--size", type=int, help="enc_keys: key size in bits (KME default)")
    fetch.add_argument(
        "--additional-slave", action="append", default=[], help="enc_keys: multicast slave SAE"
    )
    fetch.add_argument("--key-id", action="append", default=[], help="dec_keys: a key_ID")
    fetch.add_argument("--get", action="store_true", help="use the GET form instead of POST")
    fetch.add_argument(
        "--show-keys", action="store_true", help="print the keys themselves (base64)"
    )


@dataclass(frozen=True)
class _Target:
    endpoints: list[KmeEndpoint]
    credentials: SaeCredentials


def _tls(args: argparse.Namespace) -> TlsOptions:
    try:
        return TlsOptions(verify=args.tls_verify, cert_sha256=args.cert_sha256,
                          spki_sha256=args.spki_sha256, ciphers=args.ciphers)
    except KmeInvalidArgument as exc:
        raise CliUsageError(str(exc)) from None


def _target(args: argparse.Namespace) -> _Target:
    tls = _tls(args)
    if args.endpoints is not None:
        if args.url or args.kme_id or args.ca or args.cert or args.key:
            raise CliUsageError("--endpoints excludes --url/--kme-id/--ca/--cert/--key")
        return _from_endpoints_file(args.endpoints, args.sae, tls)
    missing = [
        name
        for name, value in (
            ("--url", args.url), ("--kme-id", args.kme_id), ("--ca", args.ca),
            ("--cert", args.cert), ("--key", args.key),
        )
        if not value
    ]
    if missing:
        raise CliUsageError(f"missing {', '.join(missing)} (or give --endpoints FILE)")
    return _Target(
        [KmeEndpoint(url=u, kme_id=args.kme_id, ca_file=args.ca, tls=tls) for u in args.url],
        SaeCredentials(sae_id=args.sae, cert_file=args.cert, key_file=args.key),
    )


def _from_endpoints_file(path: Path, sae: str, tls: TlsOptions) -> _Target:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliUsageError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise CliUsageError(f"{path}: not valid JSON") from None
    try:
        entry = data["saes"][sae]
        kme_ids = entry["kme"] if isinstance(entry["kme"], list) else [entry["kme"]]
        endpoints = []
        for kme_id in kme_ids:
            kme = data["kmes"][kme_id]
            urls = kme["urls"] if "urls" in kme else [kme["url"]]
            endpoints += [KmeEndpoint(url=str(u), kme_id=str(kme_id), ca_file=Path(kme["ca"]),
                                      tls=tls) for u in urls]
        creds = SaeCredentials(sae, Path(entry["cert"]), Path(entry["key"]))
    except (KeyError, TypeError):
        known = ", ".join(sorted(data.get("saes", {}))) if isinstance(data, dict) else ""
        raise CliUsageError(
            f"{path}: no usable entry for SAE {sae!r}" + (f" (known: {known})" if known else "")
        ) from None
    if not endpoints:
        raise CliUsageError(f"{path}: SAE {sae!r} names no KME")
    return _Target(endpoints, creds)


def _print_container(container: KeyContainer, args: argparse.Namespace) -> None:
    if args.json:
        keys: list[dict[str, Any]] = []
        for k in container.keys:
            entry: dict[str, Any] = {"key_ID": k.key_id}
            if args.show_keys:
                entry["key"] = base64.b64encode(k.key).decode("ascii")
            if k.key_id_extension is not None:
                entry["key_ID_extension"] = k.key_id_extension
            keys.append(entry)
        print(json.dumps({"keys": keys}, indent=2))
        return
    for k in container.keys:
        if args.show_keys:
            print(k.key_id, base64.b64encode(k.key).decode("ascii"))
        else:
            print(k.key_id)


def _retry(args: argparse.Namespace) -> RetryPolicy:
    attempts = args.attempts
    if attempts is None:
        # With a deadline the deadline is the budget, not a count of attempts.
        attempts = 1_000_000 if args.deadline is not None else 3
    if attempts < 1:
        raise CliUsageError("--attempts must be at least 1")
    if args.deadline is not None and args.deadline <= 0:
        raise CliUsageError("--deadline must be positive")
    return RetryPolicy(attempts=attempts)


async def _run(args: argparse.Namespace) -> int:
    if args.deadline is None:
        return await _commands(args)
    try:
        async with asyncio.timeout(args.deadline):
            return await _commands(args)
    except TimeoutError:
        raise KmeUnavailable(
            f"no KME answered within --deadline {args.deadline:g} s "
            "(the log above names each failed attempt)"
        ) from None


async def _commands(args: argparse.Namespace) -> int:
    target = _target(args)
    async with KmeClient(target.endpoints, target.credentials, timeout=args.timeout,
                         retry=_retry(args), dialect=args.dialect) as client:
        if args.kms_command == "status":
            status = await client.status(args.slave)
            body = status.to_json()
            if args.json:
                print(json.dumps(body, indent=2))
            else:
                for name, value in body.items():
                    print(f"{name}: {json.dumps(value) if isinstance(value, dict) else value}")
            return 0
        method: Method = "GET" if args.get else "POST"
        if args.slave is not None:
            if args.key_id:
                raise CliUsageError("--key-id goes with --master (dec_keys)")
            container = await client.enc_keys(
                args.slave,
                number=args.number,
                size=args.size,
                additional_slave_sae_ids=args.additional_slave,
                method=method,
            )
        else:
            if not args.key_id:
                raise CliUsageError("--master needs at least one --key-id")
            container = await client.dec_keys(
                args.master, args.key_id, method=method,
                # Just inside the command's deadline, so that a late key is reported as such.
                deadline_s=None if args.deadline is None else 0.9 * args.deadline,
            )
        _print_container(container, args)
        return 0


def run(args: argparse.Namespace) -> int:
    if args.kms_command == "probe":
        from kms_client import probe_cli

        return probe_cli.run(args)
    try:
        return asyncio.run(_run(args))
    except CliUsageError as exc:
        print(f"qsgw kms: {exc}", file=sys.stderr)
        return 2
    except KmsError as exc:
        print(f"qsgw kms: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
