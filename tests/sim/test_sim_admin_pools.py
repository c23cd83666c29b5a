"""Pools through the running simulator: PUT /pools/{name}, passes in GET /pools and the 503."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from simsupport import TEST_TOPOLOGY, ClientFactory, make_client

from kms_client.sim.server import Simulator

ENC = "/api/v1/keys/{}/enc_keys"
STATUS = "/api/v1/keys/{}/status"


@pytest.fixture
async def admin(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.admin_url, timeout=5) as c:
        yield c


async def test_put_pool_makes_it_scarce_and_refills_it(
    admin: httpx.AsyncClient, client_for: ClientFactory
) -> None:
    a = client_for("SAE_A1")
    r = await admin.put("/pools/ab", json={"available_bits": 512, "rate_bps": 0})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "available_bits": 512,
        "capacity_bits": 16384,
        "rate_bps": 0,
        "held_empty": False,
    }
    assert (await admin.get("/pools")).json()["ab"] == r.json()
    assert (await a.get(STATUS.format("SAE_B"))).json()["stored_key_count"] == 2
    short = await a.post(ENC.format("SAE_B"), json={"number": 3})
    assert short.status_code == 503
    assert short.json() == {
        "message": "not enough key material on the QKD link for this request",
        "details": [{"requested_key_count": 3, "stored_key_count": 2}],
    }
    r = await admin.put("/pools/ab", json={"capacity_bits": 4096, "available_bits": 4096})
    assert r.json()["available_bits"] == r.json()["capacity_bits"] == 4096
    ok = await a.post(ENC.format("SAE_B"), json={"number": 3})
    assert ok.status_code == 200, ok.text
    st = (await a.get(STATUS.format("SAE_B"))).json()
    assert (st["stored_key_count"], st["max_key_count"]) == (13, 16)
    # An empty body changes nothing; a pool name with a colon works in the path.
    assert (await admin.put("/pools/ab")).json()["available_bits"] == 3328
    local = await admin.put("/pools/local:KME_A", json={"rate_bps": 5})
    assert local.status_code == 200 and local.json()["rate_bps"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"colour": 1}, "colour"),
        ({"rate_bps": 1, "held_empty": True}, "held_empty"),
        ({"rate_bps": -1}, "rate_bps"),
        ({"capacity_bits": "lots"}, "capacity_bits"),
        ({"available_bits": True}, "available_bits"),
        ({"available_bits": 20000}, "available_bits"),  # above capacity_bits
    ],
)
async def test_put_pool_refuses_bad_fields_and_changes_nothing(
    admin: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    before = (await admin.get("/pools")).json()["ab"]
    r = await admin.put("/pools/ab", json=body)
    assert r.status_code == 400
    assert r.json()["message"].startswith(f"{field}: "), r.json()
    assert (await admin.get("/pools")).json()["ab"] == before


async def test_put_pool_unknown_pool_and_bad_body(admin: httpx.AsyncClient) -> None:
    r = await admin.put("/pools/nope", json={"rate_bps": 1})
    assert r.status_code == 404
    assert r.json() == {"message": "unknown pool 'nope'"}
    r = await admin.put("/pools/ab", content=b"[1]")
    assert r.status_code == 400 and "JSON object" in r.json()["message"]


async def test_put_pool_cannot_fill_a_pool_held_by_an_empty_pools_fault(
    sim: Simulator, admin: httpx.AsyncClient
) -> None:
    sim.set_fault("KME_A", empty_pools=True)
    r = await admin.put("/pools/ab", json={"available_bits": 1024})
    assert r.status_code == 400 and "held empty" in r.json()["message"]
    sim.clear_faults()
    assert (await admin.put("/pools/ab", json={"available_bits": 1024})).status_code == 200


# Passes: ab makes key from the start; bc's first pass is 1000 s after it (between passes
# for the whole test), holding 4 keys of 256 bits from an earlier pass.
PASSES = TEST_TOPOLOGY.replace(
    "{id: bc, kind: point_to_point, kmes: [KME_B, KME_C], rate_bps: 0, capacity_bits: 16384}",
    "{id: bc, kind: point_to_point, kmes: [KME_B, KME_C], rate_bps: 1000, capacity_bits: 16384,"
    " initial_fill: 0.0625, passes: {period_s: 2000, duration_s: 60, offset_s: 1000}}",
)


@pytest.fixture
async def pass_sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    assert PASSES != TEST_TOPOLOGY
    path = tmp_path / "passes.yaml"
    path.write_text(PASSES)
    async with Simulator.start(path, tmp_path / "state") as s:
        yield s


async def test_between_passes_stored_keys_serve_then_503_names_the_link(
    pass_sim: Simulator,
) -> None:
    made: list[httpx.AsyncClient] = []
    try:
        b = make_client(pass_sim.endpoints, "SAE_B", None, made)
        a = make_client(pass_sim.endpoints, "SAE_A1", None, made)
        async with httpx.AsyncClient(base_url=pass_sim.admin_url, timeout=5) as admin:
            pools = (await admin.get("/pools")).json()
            assert pools["bc"]["link_up"] is False
            assert 995 < pools["bc"]["next_change_in_s"] <= 1000
            assert "link_up" not in pools["ab"]
            # The relay A-B-C first: it pays on both hops, bc's stored key included.
            r = await a.post(ENC.format("SAE_C"), json={"number": 2})
            assert r.status_code == 200, r.text
            # Stored key from an earlier pass is served between passes...
            r = await b.post(ENC.format("SAE_C"), json={"number": 2})
            assert r.status_code == 200, r.text
            # ...and once it is spent, the 503 says why (same body shape as any 503).
            r = await b.post(ENC.format("SAE_C"), json={"number": 1})
            assert r.status_code == 503
            body = r.json()
            assert body["message"].startswith(
                "not enough key material: QKD link bc is between passes (next pass in "
            ), body
            assert body["details"] == [{"requested_key_count": 1, "stored_key_count": 0}]
            r = await a.post(ENC.format("SAE_C"), json={"number": 1})
            assert r.status_code == 503
            assert "QKD link bc is between passes" in r.json()["message"]
            # A pool short for another reason is not blamed on the passes: refill bc, and
            # make ab (always up) the short hop of the relay.
            await admin.put("/pools/bc", json={"available_bits": 1024})
            await admin.put("/pools/ab", json={"available_bits": 0, "rate_bps": 0})
            r = await a.post(ENC.format("SAE_C"), json={"number": 1})
            assert r.status_code == 503
            assert r.json()["message"] == "not enough key material on the QKD link for this request"
            r = await b.post(ENC.format("SAE_C"), json={"number": 4})
            assert r.status_code == 200, r.text
    finally:
        for c in made:
            await c.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_passes_count_from_the_simulator_start_and_refill_only_in_passes(
    tmp_path: Path,
) -> None:
    from kms_client.sim.topology import parse_topology

    doc = __import__("yaml").safe_load(
        TEST_TOPOLOGY.replace(
            "rate_bps: 0, capacity_bits: 16384}\n  - {id: bc",
            "rate_bps: 256, capacity_bits: 16384, initial_fill: 0,"
            " passes: {period_s: 30, duration_s: 10, offset_s: 5}}\n  - {id: bc",
        )
    )
    clock = FakeClock()
    sim = Simulator(
        parse_topology(doc),
        tmp_path / "state",
        "127.0.0.1",
        base_port=0,
        admin_port=0,
        clock=clock,
    )
    clock.now = 400.0  # time spent before open (the PKI) is before the start: no pass
    await sim.open()
    made: list[httpx.AsyncClient] = []
    try:
        a = make_client(sim.endpoints, "SAE_A1", None, made)

        async def stored() -> int:
            r = await a.get(STATUS.format("SAE_B"))
            return int(r.json()["stored_key_count"])

        assert await stored() == 0
        clock.now += 5 + 4  # four seconds into the first pass
        assert await stored() == 4
        clock.now += 20  # t = 29: between passes, 10 s of pass made 10 keys
        assert await stored() == 10
        r = await a.post(ENC.format("SAE_B"), json={"number": 8})
        assert r.status_code == 200, r.text
        clock.now += 5  # t = 34: the second pass starts at 35
        assert await stored() == 2
        clock.now += 2  # t = 36: 1 s into it
        assert await stored() == 3
        async with httpx.AsyncClient(base_url=sim.admin_url, timeout=5) as admin:
            snap = (await admin.get("/pools")).json()["ab"]
        assert snap["link_up"] is True and snap["next_change_in_s"] == 9
        assert sim.since_start() == 36
    finally:
        for c in made:
            await c.aclose()
        await sim.close()
