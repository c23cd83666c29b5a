"""Fault injection: in process (set_fault / clear_faults) and through the admin endpoint."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from simsupport import TEST_TOPOLOGY, ClientFactory, make_client

from kms_client.sim.faults import Fault, FaultError, parse_fault
from kms_client.sim.server import Simulator

ENC = "/api/v1/keys/{}/enc_keys"
DEC = "/api/v1/keys/{}/dec_keys"
STATUS = "/api/v1/keys/{}/status"
SEEDS = Path(__file__).resolve().parents[2] / "configs" / "topologies"


async def test_latency_delays_answers_of_that_kme_only(
    sim: Simulator, client_for: ClientFactory
) -> None:
    sim.set_fault("KME_A", latency_s=0.3)
    t0 = time.monotonic()
    assert (await client_for("SAE_A1").get(STATUS.format("SAE_B"))).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert (await client_for("SAE_B").get(STATUS.format("SAE_A1"))).status_code == 200
    assert time.monotonic() - t0 < 0.3


async def test_error_share_answers_503_for_about_that_share(
    sim: Simulator, client_for: ClientFactory
) -> None:
    sim.set_fault("KME_B", error_rate=0.5)
    b = client_for("SAE_B")
    codes = [(await b.get("/api/v1/noop")).status_code for _ in range(60)]
    assert set(codes) == {200, 503}
    assert 10 <= codes.count(503) <= 50
    answers = [await b.get(STATUS.format("SAE_A1")) for _ in range(20)]
    r = next(a for a in answers if a.status_code == 503)
    assert r.json() == {"message": "KME temporarily unavailable (simulated)"}
    sim.set_fault("KME_B", error_rate=1.0)
    assert (await b.get("/api/v1/noop")).status_code == 503
    sim.clear_faults()
    assert (await b.get("/api/v1/noop")).status_code == 200


async def test_outage_answers_503_to_every_call_and_loses_no_key(
    sim: Simulator, client_for: ClientFactory
) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_B"))
    kid = r.json()["keys"][0]["key_ID"]
    sim.set_fault("KME_B", outage=True)
    b = client_for("SAE_B")
    for req in (
        b.get("/api/v1/noop"),
        b.get(STATUS.format("SAE_A1")),
        b.get(DEC.format("SAE_A1"), params={"key_ID": kid}),
    ):
        resp = await req
        assert resp.status_code == 503
        assert resp.json() == {"message": "KME outage (simulated)"}
    assert (await client_for("SAE_A1").get("/api/v1/noop")).status_code == 200
    sim.clear_faults("KME_B")
    d = await b.get(DEC.format("SAE_A1"), params={"key_ID": kid})
    assert d.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]


async def test_outage_window_relative_to_start(sim: Simulator, client_for: ClientFactory) -> None:
    now = sim.since_start()
    sim.set_fault("KME_A", outage_windows=[[now + 0.3, now + 0.6]])
    a = client_for("SAE_A1")
    assert (await a.get("/api/v1/noop")).status_code == 200
    await asyncio.sleep(0.35)
    assert (await a.get("/api/v1/noop")).status_code == 503
    await asyncio.sleep(0.35)
    assert (await a.get("/api/v1/noop")).status_code == 200


async def test_empty_pools_drains_links_of_that_kme(
    sim: Simulator, client_for: ClientFactory
) -> None:
    a = client_for("SAE_A1")
    sim.set_fault("KME_B", empty_pools=True)
    r = await a.post(ENC.format("SAE_B"))
    assert r.status_code == 503
    assert (await a.get(STATUS.format("SAE_B"))).json()["stored_key_count"] == 0
    # The relay through B is dry too; A's own source is not B's.
    assert (await a.post(ENC.format("SAE_C"))).status_code == 503
    assert (await a.post(ENC.format("SAE_A2"))).status_code == 200
    sim.clear_faults()
    # The link test topology makes no new keys (rate 0): drained stays drained.
    assert (await a.post(ENC.format("SAE_B"))).status_code == 503


async def test_delayed_key_is_not_found_at_the_slave_until_it_arrives(
    sim: Simulator, client_for: ClientFactory
) -> None:
    sim.set_fault("KME_B", key_delay_s=0.4)
    r = await client_for("SAE_A1").post(ENC.format("SAE_B"))
    kid = r.json()["keys"][0]["key_ID"]
    b = client_for("SAE_B")
    early = await b.get(DEC.format("SAE_A1"), params={"key_ID": kid})
    assert early.status_code == 400
    assert early.json() == {"message": "one or more keys specified are not found on KME"}
    deadline = time.monotonic() + 3
    while True:
        d = await b.get(DEC.format("SAE_A1"), params={"key_ID": kid})
        if d.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert d.status_code == 200
    assert d.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]


def test_bad_faults_are_refused_with_the_field_named(sim: Simulator) -> None:
    for bad, field in (
        ({"error_rate": 2}, "error_rate"),
        ({"latency_s": -1}, "latency_s"),
        ({"outage": "yes"}, "outage"),
        ({"outage_windows": [[5, 1]]}, "outage_windows[0]"),
        ({"latency": 1}, "latency"),
    ):
        with pytest.raises(FaultError, match=field.replace("[", r"\[").replace("]", r"\]")):
            sim.set_fault("KME_A", **bad)
    assert sim.faults()["KME_A"] == Fault()
    with pytest.raises(KeyError):
        sim.set_fault("KME_NOBODY", outage=True)


def test_parse_fault_merges_onto_a_base() -> None:
    f = parse_fault({"latency_s": 0.5}, base=Fault(outage=True))
    assert f == Fault(latency_s=0.5, outage=True)


async def test_admin_endpoint_sets_shows_and_clears_faults(
    sim: Simulator, client_for: ClientFactory
) -> None:
    assert sim.admin_url.startswith("http://127.0.0.1:")
    b = client_for("SAE_B")
    async with httpx.AsyncClient(base_url=sim.admin_url, timeout=5) as admin:
        r = await admin.put("/faults/KME_B", json={"outage": True, "latency_s": 0.01})
        assert r.status_code == 200
        assert r.json()["outage"] is True
        assert (await b.get("/api/v1/noop")).status_code == 503
        faults = (await admin.get("/faults")).json()
        assert faults["KME_B"]["outage"] is True
        assert faults["KME_A"] == Fault().to_json()
        bad = await admin.put("/faults/KME_B", json={"error_rate": 7})
        assert bad.status_code == 400
        assert "error_rate" in bad.json()["message"]
        assert (await admin.get("/faults")).json()["KME_B"]["outage"] is True  # kept
        assert (await admin.put("/faults/KME_X", json={})).status_code == 404
        assert (await admin.delete("/faults/KME_B")).status_code == 200
        assert (await b.get("/api/v1/noop")).status_code == 200
        await admin.put("/faults/KME_A", json={"empty_pools": True})
        pools = (await admin.get("/pools")).json()
        assert pools["ab"]["available_bits"] == 0 and pools["ab"]["held_empty"] is True
        assert pools["bc"]["available_bits"] == 16384
        assert (await admin.delete("/faults")).status_code == 200
        assert (await admin.get("/pools")).json()["ab"]["held_empty"] is False
        r = await client_for("SAE_C").post(ENC.format("SAE_B"))
        kid = r.json()["keys"][0]["key_ID"]
        delivered = (await admin.get("/delivered/SAE_C")).json()
        assert delivered == {"sae_ID": "SAE_C", "key_IDs": [kid]}
        assert (await admin.get("/delivered/SAE_X")).status_code == 404


async def test_admin_patch_changes_only_named_fields_and_drain_refills(tmp_path: Path) -> None:
    made: list[httpx.AsyncClient] = []
    async with Simulator.start(SEEDS / "madqci.yaml", tmp_path) as sim:
        try:
            inta = make_client(sim.endpoints, "SAE_INTA_GW", None, made)
            async with httpx.AsyncClient(base_url=sim.admin_url, timeout=5) as admin:
                await admin.put("/faults/KME_UPM", json={"latency_s": 0.01})
                r = await admin.patch("/faults/KME_UPM", json={"key_delay_s": 2})
                assert (r.json()["latency_s"], r.json()["key_delay_s"]) == (0.01, 2)
                assert (await admin.post("/drain/KME_INTA")).status_code == 200
                st = await inta.get("/api/v1/keys/SAE_UPM_GW/status")
                assert st.json()["stored_key_count"] == 0
                # The shared hub makes 6 kbit/s: about 6 keys of 256 bits in a quarter second
                # (the bound leaves a slow runner most of a second).
                await asyncio.sleep(0.25)
                st = await inta.get("/api/v1/keys/SAE_UPM_GW/status")
                assert 1 <= st.json()["stored_key_count"] <= 24
                # The hub is shared: its one pool was drained for the other pairs too.
                sg = make_client(sim.endpoints, "SAE_SGSICS_GW", None, made)
                st = await sg.get("/api/v1/keys/SAE_UPM_GW/status")
                assert st.json()["stored_key_count"] <= 24
                assert (await admin.get("/pools")).json()["madrid-mdi"]["available_bits"] < 8192
                assert (await admin.post("/drain/KME_X")).status_code == 404
        finally:
            for c in made:
                await c.aclose()


async def test_faults_from_the_topology_file_apply_from_the_start(tmp_path: Path) -> None:
    topo = tmp_path / "t.yaml"
    topo.write_text(
        TEST_TOPOLOGY.replace(
            "{id: KME_D, saes: [SAE_D]}", "{id: KME_D, saes: [SAE_D], faults: {outage: true}}"
        )
    )
    made: list[httpx.AsyncClient] = []
    async with Simulator.start(topo, tmp_path / "state") as sim:
        try:
            d = make_client(sim.endpoints, "SAE_D", None, made)
            assert (await d.get("/api/v1/noop")).status_code == 503
            a = make_client(sim.endpoints, "SAE_A1", None, made)
            assert (await a.get("/api/v1/noop")).status_code == 200
        finally:
            for c in made:
                await c.aclose()
