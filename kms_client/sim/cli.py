"""`qsgw kme-sim`: run the KME simulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from kms_client.sim.faults import FaultError
from kms_client.sim.pki import PkiError
from kms_client.sim.topology import TopologyError

# A topology of thousands of SAEs (a hub's branches) lists only this many of each here.
LIST_MAX = 50


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:LIST_MAX])
    return shown if len(items) <= LIST_MAX else f"{shown}, ... ({len(items)} in all)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", required=True, type=Path, help="topology YAML file")
    parser.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="directory for the test PKI and endpoints.json (reused on the next start)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every KME listens on")
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="KME i listens on BASE_PORT+i (default: the topology's ports, else free ports)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="fault-injection endpoint on 127.0.0.1 (default: a free port, printed)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for random fault decisions")
    parser.add_argument(
        "--record-keys-for-tests",
        action="store_true",
        help="keep every key handed out, readable at the admin endpoint's /recorded-keys "
        "(for tests that search outputs for key material; never for anything else)",
    )


async def _serve(args: argparse.Namespace) -> int:
    from kms_client.sim.server import Simulator  # aiohttp only when running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator.start(
        args.topology,
        args.state_dir,
        args.host,
        base_port=args.base_port,
        admin_port=args.admin_port,
        seed=args.seed,
        record_keys=args.record_keys_for_tests,
    ) as sim:
        ep = sim.endpoints
        print(f"topology {sim.topology.name}: {len(ep['kmes'])} KMEs", flush=False)
        for kme_id, info in ep["kmes"].items():
            saes = [s for s, v in ep["saes"].items() if v["kme"] == kme_id]
            print(f"KME {kme_id} listens on {info['url']} (SAEs: {_some(saes)})")
        print(f"CA certificate: {sim.pki.ca_cert if sim.pki else '?'}")
        for sae_id, info in list(ep["saes"].items())[:LIST_MAX]:
            print(f"SAE {sae_id} at {info['kme']}: cert {info['cert']} key {info['key']}")
        for master, slave in ep["pairs"][:LIST_MAX]:
            print(f"pair master {master} -> slave {slave}")
        for what in ("saes", "pairs"):
            if len(ep[what]) > LIST_MAX:
                print(f"... {len(ep[what]) - LIST_MAX} more {what[:-1].upper()}s listed in "
                      "endpoints.json")
        print(f"admin (faults) at {sim.admin_url}")
        print(f"endpoints written to {sim.state_dir / 'endpoints.json'}", flush=True)
        await stop.wait()
    print("KME simulator stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args))
    except (TopologyError, FaultError, PkiError) as exc:
        print(f"qsgw kme-sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"qsgw kme-sim: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
