"""`qsgw kms status|fetch` through the real dispatcher against the simulator (run in a
background thread's event loop, over mutual TLS on loopback)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _requires import require

from gateway.cli import main

require("kme-sim")  # its dependencies come with the venv `make setup` makes
from kms_client.sim.server import Simulator  # noqa: E402

TOPOLOGY = """
name: clitest
kmes:
  - {id: KME_A, saes: [SAE_A]}
  - {id: KME_B, saes: [SAE_B]}
links:
  - {id: ab, kind: point_to_point, kmes: [KME_A, KME_B], rate_bps: 0, capacity_bits: 100000}
"""


@pytest.fixture(scope="module")
def sim_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("kmscli")
    (base / "topology.yaml").write_text(TOPOLOGY)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop
        try:
            async with Simulator.start(base / "topology.yaml", base / "state"):
                ready.set()
                await asyncio.wait_for(stop.wait(), 120)
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "simulator did not start"
        if "error" in box:
            raise box["error"]
        yield base / "state" / "endpoints.json"
    finally:
        if "loop" in box:
            box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(15)


def qsgw(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["kms", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_status(sim_endpoints: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = qsgw(
        capsys, "status", "--endpoints", str(sim_endpoints), "--sae", "SAE_A", "--slave", "SAE_B"
    )
    assert rc == 0
    assert "source_KME_ID: KME_A" in out and "target_KME_ID: KME_B" in out


def test_fetch_prints_ids_not_keys_unless_asked(
    sim_endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = ["--endpoints", str(sim_endpoints)]
    rc, out, _ = qsgw(capsys, "fetch", *ep, "--sae", "SAE_A", "--slave", "SAE_B", "--number", "2")
    assert rc == 0
    ids = out.split()
    assert len(ids) == 2 and all(len(i) == 36 for i in ids)
    # The slave fetches the same keys by ID, with --show-keys and JSON.
    args = ["fetch", *ep, "--sae", "SAE_B", "--master", "SAE_A", "--json", "--show-keys"]
    for kid in ids:
        args += ["--key-id", kid]
    rc, out, _ = qsgw(capsys, *args)
    assert rc == 0
    keys = json.loads(out)["keys"]
    assert [k["key_ID"] for k in keys] == ids and all(len(k["key"]) == 44 for k in keys)


def test_explicit_connection_options_and_get_form(
    sim_endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(sim_endpoints.read_text())
    sae, kme = data["saes"]["SAE_A"], data["kmes"]["KME_A"]
    conn = ["--url", kme["url"], "--kme-id", "KME_A", "--ca", kme["ca"],
            "--cert", sae["cert"], "--key", sae["key"], "--sae", "SAE_A"]
    rc, out, _ = qsgw(capsys, "fetch", *conn, "--slave", "SAE_B", "--get", "--json")
    assert rc == 0
    assert "key" not in json.loads(out)["keys"][0]
    bad = [*conn[:2], "--kme-id", "KME_B", *conn[4:]]
    rc, _, err = qsgw(capsys, "status", *bad, "--slave", "SAE_B")
    assert rc == 1 and "KmeIdentityMismatch" in err


def test_errors_are_reported_not_raised(
    sim_endpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = ["--endpoints", str(sim_endpoints)]
    rc, _, err = qsgw(capsys, "status", *ep, "--sae", "SAE_NOPE", "--slave", "SAE_B")
    assert rc == 2 and "SAE_A" in err  # names the SAEs that exist
    rc, _, err = qsgw(capsys, "fetch", *ep, "--sae", "SAE_A", "--slave", "SAE_B", "--size", "100")
    assert rc == 1 and "multiple of 8" in err
    rc, _, err = qsgw(capsys, "fetch", *ep, "--sae", "SAE_B", "--master", "SAE_A")
    assert rc == 2 and "--key-id" in err
    rc, _, err = qsgw(capsys, "status", "--sae", "SAE_A", "--slave", "SAE_B", "--url", "https://x")
    assert rc == 2 and "--kme-id" in err
    (tmp_path / "bad.json").write_text("{")
    rc, _, err = qsgw(capsys, "status", "--endpoints", str(tmp_path / "bad.json"),
                      "--sae", "SAE_A", "--slave", "SAE_B")
    assert rc == 2 and "not valid JSON" in err


def _closed_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


def test_failover_across_urls_of_an_endpoints_file(
    sim_endpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(sim_endpoints.read_text())
    dead = _closed_url()
    data["kmes"]["KME_A"]["urls"] = [dead, data["kmes"]["KME_A"]["url"]]
    (tmp_path / "ep.json").write_text(json.dumps(data))
    rc, out, _ = qsgw(capsys, "status", "--endpoints", str(tmp_path / "ep.json"), "--sae",
                      "SAE_A", "--slave", "SAE_B", "--attempts", "1")
    assert rc == 0 and "source_KME_ID: KME_A" in out


def test_attempts_are_per_endpoint(capsys: pytest.CaptureFixture[str], sim_endpoints: Path
                                   ) -> None:
    data = json.loads(sim_endpoints.read_text())
    sae, kme = data["saes"]["SAE_A"], data["kmes"]["KME_A"]
    dead = _closed_url()
    conn = ["--url", dead, "--kme-id", "KME_A", "--ca", kme["ca"], "--cert", sae["cert"],
            "--key", sae["key"], "--sae", "SAE_A", "--slave", "SAE_B"]
    rc, _, err = qsgw(capsys, "status", *conn, "--attempts", "1")
    assert rc == 1 and "KmeUnavailable" in err and err.count(dead) == 1
    rc, _, err = qsgw(capsys, "status", *conn, "--attempts", "3")
    assert rc == 1 and err.count(dead) == 2  # the message keeps the last two failures


def test_deadline_rides_out_an_outage_the_default_budget_does_not(
    sim_endpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    admin = json.loads(sim_endpoints.read_text())["admin"]
    args = ["status", "--endpoints", str(sim_endpoints), "--sae", "SAE_A", "--slave", "SAE_B"]
    httpx.put(f"{admin}/faults/KME_A", json={"outage": True}).raise_for_status()
    try:
        rc, _, err = qsgw(capsys, *args)
        assert rc == 1 and "KmeUnavailable" in err and "503" in err
        healer = threading.Timer(1.5, lambda: httpx.delete(f"{admin}/faults/KME_A"))
        healer.start()
        rc, out, err = qsgw(capsys, *args, "--deadline", "20")
        healer.join()
        assert rc == 0 and "source_KME_ID: KME_A" in out, err
        httpx.put(f"{admin}/faults/KME_A", json={"outage": True}).raise_for_status()
        rc, _, err = qsgw(capsys, *args, "--deadline", "0.5")
        assert rc == 1 and "--deadline 0.5" in err
    finally:
        httpx.delete(f"{admin}/faults/KME_A")


def test_probe_subcommand(sim_endpoints: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ep = ["probe", "--endpoints", str(sim_endpoints), "--master", "SAE_A", "--slave", "SAE_B"]
    rc, out, _ = qsgw(capsys, *ep)
    assert rc == 0 and "checks passed" in out and "FAIL" not in out
    rc, out, _ = qsgw(capsys, *ep, "--tls-verify", "cert-sha256", "--cert-sha256", "00" * 32)
    assert rc == 1 and "tls.master" in out and "FAIL" in out and "no request was sent" in out
    rc, _, err = qsgw(capsys, *ep, "--tls-verify", "cert-sha256")
    assert rc == 2 and "cert_sha256" in err
