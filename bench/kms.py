"""Benchmark the ETSI GS QKD 014 client end to end against the KME simulator.

The simulator runs as a separate process (`qsgw kme-sim`, via gateway.cli) and the
client in this one, so that on a 2-core machine each has a core and neither's event
loop time is charged to the other. Everything goes over real mutual TLS on loopback
with connection reuse (one keep-alive connection per SAE).

Figures (one JSON object on stdout; --save FILE writes it too):
  pairs_per_s_single   key pairs/s, one key per call: enc_keys at the master's KME,
                       then dec_keys of that key_ID at the slave's KME, sequentially
  pairs_per_s_batched  the same with max_key_per_request keys per call
  enc_keys_p50_ms / enc_keys_p99_ms   latency of one enc_keys call (number=1)
  noop_p50_ms          the same client's round trip to the simulator's GET /api/v1/noop
                       (same TLS connection, same auth prelude), interleaved with the
                       enc_keys calls so that both see the same conditions
  client_cpu_ms_per_call  this process's CPU per status call, 1 and 100 calls in flight:
                       KmeClient (over aiohttp) against a plain httpx.AsyncClient making the
                       same call with the same TLS context (the transport KmeClient had)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kms_client import KmeClient, KmeEndpoint, RetryPolicy, SaeCredentials  # noqa: E402

BATCH = 128
TOPOLOGY = f"""
name: bench
defaults:
  key_size: 256
  min_key_size: 64
  max_key_size: 1024
  max_key_per_request: {BATCH}
  max_SAE_ID_count: 0
kmes:
  - {{id: KME_M, saes: [SAE_M]}}
  - {{id: KME_S, saes: [SAE_S]}}
links:
  - {{id: ms, kind: point_to_point, kmes: [KME_M, KME_S], rate_bps: 1000000000000,
      capacity_bits: 1000000000000}}
"""


def _client(endpoints: dict[str, Any], sae: str) -> KmeClient:
    entry = endpoints["saes"][sae]
    kme = endpoints["kmes"][entry["kme"]]
    return KmeClient(
        [KmeEndpoint(kme["url"], entry["kme"], Path(kme["ca"]))],
        SaeCredentials(sae, Path(entry["cert"]), Path(entry["key"])),
        timeout=10.0,
        retry=RetryPolicy(attempts=1),  # a retry would hide a failure inside a figure
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _pairs_per_s(master: KmeClient, slave: KmeClient, number: int, seconds: float) -> float:
    pairs = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        enc = await master.enc_keys("SAE_S", number=number)
        dec = await slave.dec_keys("SAE_M", list(enc.key_ids))
        if [k.key for k in dec.keys] != [k.key for k in enc.keys]:
            raise RuntimeError("slave's keys differ from the master's")
        pairs += len(dec.keys)
    return pairs / (time.perf_counter() - t0)


async def _measure(endpoints: dict[str, Any], seconds: float, samples: int) -> dict[str, Any]:
    async with _client(endpoints, "SAE_M") as master, _client(endpoints, "SAE_S") as slave:
        # Warm up: TLS handshakes, first allocations.
        for _ in range(20):
            await master.get_raw("/api/v1/noop")
            enc = await master.enc_keys("SAE_S")
            await slave.dec_keys("SAE_M", list(enc.key_ids))
        enc_ms: list[float] = []
        noop_ms: list[float] = []
        drained: list[str] = []
        for _ in range(samples):
            t = time.perf_counter()
            await master.get_raw("/api/v1/noop")
            noop_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            enc = await master.enc_keys("SAE_S")
            enc_ms.append((time.perf_counter() - t) * 1e3)
            drained.extend(enc.key_ids)
        # Collect those keys at the slave too, so the simulator's store does not grow.
        for i in range(0, len(drained), BATCH):
            await slave.dec_keys("SAE_M", drained[i : i + BATCH])
        single = await _pairs_per_s(master, slave, 1, seconds)
        batched = await _pairs_per_s(master, slave, BATCH, seconds)
    p50 = statistics.median(enc_ms)
    noop = statistics.median(noop_ms)
    return {
        "pairs_per_s_single": round(single, 1),
        "pairs_per_s_batched": round(batched, 1),
        "enc_keys_p50_ms": round(p50, 3),
        "enc_keys_p99_ms": round(_pct(enc_ms, 0.99), 3),
        "noop_p50_ms": round(noop, 3),
        "enc_keys_over_noop": round(p50 / noop, 2),
        "batch": BATCH,
        "samples": samples,
        "seconds_per_rate": seconds,
        "targets": {
            "pairs_per_s_batched_ge_2000": batched >= 2000,
            "enc_keys_p50_within_2x_noop": p50 <= 2 * noop,
        },
        "setup": "simulator in a subprocess, client in this process, mutual TLS on loopback",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _cpu_per_call(call: Any, in_flight: int, n: int) -> float:
    """ms of this process's CPU per call, `in_flight` at a time."""
    for _ in range(20):
        await call()
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await call()

    t0 = _cpu()
    await asyncio.gather(*(one() for _ in range(n)))
    return round((_cpu() - t0) / n * 1e3, 3)


async def _client_cpu(endpoints: dict[str, Any], n: int) -> dict[str, Any]:
    import httpx

    from kms_client._tls import client_ssl_context

    entry = endpoints["saes"]["SAE_M"]
    kme = endpoints["kmes"][entry["kme"]]
    ctx = client_ssl_context(Path(kme["ca"]), Path(entry["cert"]), Path(entry["key"]),
                             kme_id=entry["kme"])
    out: dict[str, Any] = {}
    async with _client(endpoints, "SAE_M") as ours, httpx.AsyncClient(
            base_url=kme["url"], verify=ctx, timeout=10.0,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16)) as plain:
        async def via_httpx() -> None:
            (await plain.get("/api/v1/keys/SAE_S/status")).raise_for_status()

        async def via_ours() -> None:
            await ours.status("SAE_S")

        for k in (1, 100):
            out[f"in_flight_{k}"] = {"qsgw": await _cpu_per_call(via_ours, k, n),
                                     "httpx_baseline": await _cpu_per_call(via_httpx, k, n)}
    return out


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with status {proc.returncode}")
        if path.exists():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except ValueError:
                pass  # being written
        time.sleep(0.05)
    raise RuntimeError("simulator did not write endpoints.json in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput figure")
    parser.add_argument("--samples", type=int, default=1000, help="enc_keys/noop latency samples")
    parser.add_argument("--json", action="store_true",
                          help="print the one JSON object on one line (it is always JSON)")
    parser.add_argument("--save", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qsgw-bench-kms-") as tmp:
        base = Path(tmp)
        (base / "topology.yaml").write_text(TOPOLOGY)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "kme-sim", "--topology",
             str(base / "topology.yaml"), "--state-dir", str(base / "state"), "--base-port", "0"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        try:
            endpoints = _wait_for(base / "state" / "endpoints.json", proc, 60)
            result = asyncio.run(_measure(endpoints, args.seconds, args.samples))
            result["client_cpu_ms_per_call"] = asyncio.run(_client_cpu(endpoints, 2000))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
