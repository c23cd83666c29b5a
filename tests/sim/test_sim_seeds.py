"""Every seed topology starts and gives matching keys to both ends of each SAE pair."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from simsupport import make_client

from kms_client.sim.server import Simulator

SEEDS = Path(__file__).resolve().parents[2] / "configs" / "topologies"


@pytest.mark.parametrize("name", ["benelux-mdi", "beqci", "int-uqkd", "madqci"])
async def test_seed_serves_every_pair(name: str, tmp_path: Path) -> None:
    made: list[httpx.AsyncClient] = []
    async with Simulator.start(SEEDS / f"{name}.yaml", tmp_path) as sim:
        try:
            ep = sim.endpoints
            assert ep["pairs"]
            for master, slave in ep["pairs"]:
                m = make_client(ep, master, None, made)
                s = make_client(ep, slave, None, made)
                st = await m.get(f"/api/v1/keys/{slave}/status")
                assert st.status_code == 200, (master, slave, st.text)
                assert st.json()["stored_key_count"] >= 2
                r = await m.post(f"/api/v1/keys/{slave}/enc_keys", json={"number": 2})
                assert r.status_code == 200, (master, slave, r.text)
                keys = r.json()["keys"]
                d = await s.post(
                    f"/api/v1/keys/{master}/dec_keys",
                    json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]},
                )
                assert d.status_code == 200, (master, slave, d.text)
                assert [k["key"] for k in d.json()["keys"]] == [k["key"] for k in keys]
            all_ids = [i for sae in ep["saes"] for i in sim.delivered_key_ids(sae)]
            assert len(all_ids) == 2 * 2 * len(ep["pairs"])
            assert len(set(all_ids)) == 2 * len(ep["pairs"])  # each key_ID: master + slave
        finally:
            for c in made:
                await c.aclose()


async def test_int_uqkd_redu_singapore_goes_through_luxembourg(tmp_path: Path) -> None:
    made: list[httpx.AsyncClient] = []
    async with Simulator.start(SEEDS / "int-uqkd.yaml", tmp_path) as sim:
        try:
            sat = sim.network.pools["lux-singapore-sat"]
            assert 4096 <= sat.available_bits() < 8192  # half full at start, in a pass
            # The first pass is on from the start: hold the count still for an exact check.
            sat.configure(rate_bps=0, available_bits=4096)
            c = make_client(sim.endpoints, "SAE_ESEC_GW", None, made)
            r = await c.post("/api/v1/keys/SAE_SINGAPORE_GW/enc_keys")
            ext = r.json()["keys"][0]["key_ID_extension"]["qsgw_route"]
            assert ext["path"] == ["KME_ESEC_REDU", "KME_LUX_DC", "KME_SINGAPORE"]
            # The satellite hop paid for it too: 4096 bits less one key.
            assert sat.available_bits() == 4096 - 256
        finally:
            for cl in made:
                await cl.aclose()
