"""The KME simulator's admin routes: faults, pools and delivered keys over plain HTTP on loopback.

A plain-HTTP admin endpoint on 127.0.0.1 sets faults at run time:

    GET    /faults                 -> {KME_ID: fault}
    PUT    /faults/{KME_ID}        body: a fault (see faults.Fault), replaces the KME's fault
    PATCH  /faults/{KME_ID}        body: some fault fields, changes only those
    POST   /drain/{KME_ID}         empty that KME's pools once (they refill at their rates)
    DELETE /faults/{KME_ID}        heal one KME;  DELETE /faults: heal all
    GET    /pools                  -> {pool: {available_bits, capacity_bits, rate_bps, held_empty}}
                                      pools of a link with passes also give link_up (bool)
                                      and next_change_in_s (null if it never changes)
    PUT    /pools/{pool}           body: any of {rate_bps, capacity_bits, available_bits}
                                      (numbers >= 0) -> the pool's new entry as in GET /pools;
                                      changes it live (make a pool scarce, refill it)
    GET    /delivered/{SAE_ID}     -> {"sae_ID": ..., "key_IDs": [every key_ID delivered, in order]}
    GET    /recorded-keys          -> {"keys": {key_ID: base64 key}} only when started with
                                      --record-keys-for-tests (tests that search outputs for keys)

A fault, as sent and answered: {"latency_s": 0.2, "error_rate": 0.1, "outage": false,
"outage_windows": [[10, 20]], "empty_pools": false, "key_delay_s": 1.5} (windows in seconds
after the simulator started). A bad fault or pool change is answered 400 {"message":
naming the field} and changes nothing; an unknown KME, SAE or pool 404. Pool names: a
point_to_point link's ID, a shared mdi_hub's ID, "<hub>:<KME a>-<KME b>" per pair of an
unshared hub, "local:<KME>" for SAEs of one KME. Setting available_bits above
capacity_bits, or above 0 on a pool held by an empty_pools fault, is a 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kms_client.sim.faults import FaultError
from kms_client.sim.http import Reply, bad, json_body, json_response

if TYPE_CHECKING:
    from kms_client.sim.server import Simulator


POOL_FIELDS = ("rate_bps", "capacity_bits", "available_bits")


def _pool_changes(body: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in body.items():
        if name not in POOL_FIELDS:
            raise bad(f"{name}: unknown field; allowed: {', '.join(POOL_FIELDS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise bad(f"{name}: must be a number at least 0")
        out[name] = value
    return out


class AdminHandlers:
    """Fault injection and inspection over plain HTTP on loopback."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def install(self, app: web.Application) -> None:
        app.router.add_get("/faults", self.get_faults)
        app.router.add_put("/faults/{kme}", self.put_fault)
        app.router.add_patch("/faults/{kme}", self.put_fault)
        app.router.add_post("/drain/{kme}", self.drain)
        app.router.add_delete("/faults/{kme}", self.delete_fault)
        app.router.add_delete("/faults", self.delete_faults)
        app.router.add_get("/pools", self.pools)
        app.router.add_put("/pools/{pool}", self.put_pool)
        app.router.add_get("/delivered/{sae}", self.delivered)
        app.router.add_get("/recorded-keys", self.recorded_keys)

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response({k: f.to_json() for k, f in self.sim.faults().items()})

    async def put_fault(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return json_response({"message": f"unknown KME {kme!r}"}, 404)
        try:
            body = await json_body(request, allow_empty=True)
            if request.method == "PATCH":
                fault = self.sim.update_fault(kme, **body)
            else:
                fault = self.sim.set_fault(kme, **body)
        except Reply as r:
            return r.response()
        except FaultError as exc:
            return json_response({"message": str(exc)}, 400)
        return json_response(fault.to_json())

    async def drain(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return json_response({"message": f"unknown KME {kme!r}"}, 404)
        self.sim.drain_pools(kme)
        return json_response({})

    async def delete_fault(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return json_response({"message": f"unknown KME {kme!r}"}, 404)
        self.sim.clear_faults(kme)
        return json_response({})

    async def delete_faults(self, request: web.Request) -> web.Response:
        self.sim.clear_faults()
        return json_response({})

    async def pools(self, request: web.Request) -> web.Response:
        return json_response(self.sim.network.snapshot())

    async def put_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["pool"]
        pool = self.sim.network.pools.get(name)
        if pool is None:
            return json_response({"message": f"unknown pool {name!r}"}, 404)
        try:
            changes = _pool_changes(await json_body(request, allow_empty=True))
            cap = changes.get("capacity_bits")
            pool.configure(
                rate_bps=changes.get("rate_bps"),
                capacity_bits=None if cap is None else int(cap),
                available_bits=changes.get("available_bits"),
            )
        except Reply as r:
            return r.response()
        except ValueError as exc:
            return json_response({"message": str(exc)}, 400)
        return json_response(self.sim.network.pool_snapshot(name))

    async def recorded_keys(self, request: web.Request) -> web.Response:
        if self.sim.recorded_keys is None:
            return json_response({"message": "key recording is off (--record-keys-for-tests)"}, 404)
        return json_response({"keys": self.sim.recorded_keys})

    async def delivered(self, request: web.Request) -> web.Response:
        sae = request.match_info["sae"]
        if self.sim.sae_kme(sae) is None:
            return json_response({"message": f"unknown SAE {sae!r}"}, 404)
        return json_response({"sae_ID": sae, "key_IDs": self.sim.delivered_key_ids(sae)})
