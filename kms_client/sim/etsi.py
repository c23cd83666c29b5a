"""The KME simulator's ETSI GS QKD 014 routes: status, enc_keys and dec_keys of one KME."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kms_client.sim.http import Reply, bad, json_body, json_response
from kms_client.sim.pools import KeyNetwork, Route
from kms_client.sim.tls import common_name
from kms_client.sim.topology import KeyParams

if TYPE_CHECKING:
    from kms_client.sim.server import Simulator

API = "/api/v1/keys"
MSG_EXT_MANDATORY = "not all extension_mandatory parameters are supported"
MSG_SIZE_8 = "size shall be a multiple of 8"


def _int_param(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{name} must be an integer")
    return value


def _query_int(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 9:
        raise bad(f"{name} must be a positive decimal integer")
    return int(value)


class KmeHandlers:
    """The ETSI 014 endpoints of one KME."""

    def __init__(self, sim: Simulator, kme_id: str) -> None:
        self.sim = sim
        self.kme_id = kme_id

    def install(self, app: web.Application) -> None:
        app.router.add_get(API + "/{sae}/status", self.status)
        app.router.add_get(API + "/{sae}/enc_keys", self.enc_keys)
        app.router.add_post(API + "/{sae}/enc_keys", self.enc_keys)
        app.router.add_get(API + "/{sae}/dec_keys", self.dec_keys)
        app.router.add_post(API + "/{sae}/dec_keys", self.dec_keys)
        app.router.add_get("/api/v1/noop", self.noop)

    async def _prelude(self, request: web.Request) -> str:
        """Faults first (a KME that is down is down for everyone), then who is calling."""
        fault = self.sim.fault(self.kme_id)
        if fault.latency_s:
            await asyncio.sleep(fault.latency_s)
        if (fault.outage or fault.outage_windows) and fault.in_outage(self.sim.since_start()):
            raise Reply(503, "KME outage (simulated)")
        if fault.error_rate and self.sim.roll(fault.error_rate):
            raise Reply(503, "KME temporarily unavailable (simulated)")
        transport = request.transport
        caller = common_name(transport.get_extra_info("peercert")) if transport else None
        if caller is None or self.sim.sae_kme(caller) != self.kme_id:
            raise Reply(401, "the client certificate names no SAE served by this KME")
        return caller

    def _route_to(self, caller: str, slave: str, role: str) -> tuple[str, Route]:
        slave_kme = self.sim.sae_kme(slave)
        if slave_kme is None:
            raise bad(f"unknown {role} SAE ID")
        # A master asking dec_keys for its own keys is answered 401 by the key store.
        if slave == caller and role == "slave":
            raise bad(f"{role} SAE ID must differ from the caller's")
        route = self.sim.network.route(self.kme_id, slave_kme)
        if route is None:
            raise bad(f"no QKD link from {self.kme_id} to {slave_kme}")
        return slave_kme, route

    async def noop(self, request: web.Request) -> web.Response:
        try:
            await self._prelude(request)
        except Reply as r:
            return r.response()
        return json_response({})

    async def status(self, request: web.Request) -> web.Response:
        try:
            caller = await self._prelude(request)
            slave = request.match_info["sae"]
            slave_kme, route = self._route_to(caller, slave, "slave")
        except Reply as r:
            return r.response()
        p = route.params
        return json_response(
            {
                "source_KME_ID": self.kme_id,
                "target_KME_ID": slave_kme,
                "master_SAE_ID": caller,
                "slave_SAE_ID": slave,
                "key_size": p.key_size,
                "stored_key_count": route.available_bits() // p.key_size,
                "max_key_count": route.capacity_bits() // p.key_size,
                "max_key_per_request": p.max_key_per_request,
                "max_key_size": p.max_key_size,
                "min_key_size": p.min_key_size,
                "max_SAE_ID_count": p.max_sae_id_count,
                "status_extension": route.extension,
            }
        )

    async def enc_keys(self, request: web.Request) -> web.Response:
        try:
            caller = await self._prelude(request)
            slave = request.match_info["sae"]
            _, route = self._route_to(caller, slave, "slave")
            req = await self._enc_request(request)
            return json_response({"keys": self._enc(caller, slave, route, req)})
        except Reply as r:
            return r.response()

    async def _enc_request(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            extra = set(request.query) - {"number", "size"}
            if extra:
                raise bad("GET enc_keys takes only number and size; use POST for other parameters")
            return {k: _query_int(v, k) for k, v in request.query.items()}
        if request.query:
            raise bad("POST enc_keys takes its parameters in the body")
        return await json_body(request, allow_empty=True)

    def _enc(
        self, caller: str, slave: str, route: Route, req: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        mandatory = req.get("extension_mandatory")
        optional = req.get("extension_optional")
        for name, ext in (("extension_mandatory", mandatory), ("extension_optional", optional)):
            if ext is not None and not (
                isinstance(ext, list) and all(isinstance(e, dict) for e in ext)
            ):
                raise bad(f"{name} must be an array of objects")
        if mandatory:
            raise bad(MSG_EXT_MANDATORY)
        p: KeyParams = route.params
        number = _int_param(req.get("number", 1), "number")
        size = _int_param(req.get("size", p.key_size), "size")
        if number < 1:
            raise bad("number must be at least 1")
        if number > p.max_key_per_request:
            raise bad(f"number exceeds max_key_per_request ({p.max_key_per_request})")
        if size < 1:
            raise bad("size must be positive")
        if size % 8:
            raise bad(MSG_SIZE_8)
        if not p.min_key_size <= size <= p.max_key_size:
            raise bad(
                f"size must be between min_key_size ({p.min_key_size}) "
                f"and max_key_size ({p.max_key_size})"
            )
        extra_raw = req.get("additional_slave_SAE_IDs", [])
        if not isinstance(extra_raw, list) or not all(isinstance(s, str) for s in extra_raw):
            raise bad("additional_slave_SAE_IDs must be an array of strings")
        if len(extra_raw) > p.max_sae_id_count:
            raise bad(f"additional_slave_SAE_IDs exceeds max_SAE_ID_count ({p.max_sae_id_count})")
        slaves = [slave, *extra_raw]
        if len(set(slaves)) != len(slaves):
            raise bad("additional_slave_SAE_IDs repeats a slave SAE ID")
        routes: dict[str, Route] = {}
        for s in slaves:
            s_kme, r = self._route_to(caller, s, "slave")
            if s_kme not in routes:
                if not r.params.min_key_size <= size <= r.params.max_key_size:
                    raise bad(f"size not supported on the link to {s_kme}")
                routes[s_kme] = r
        bits = number * size
        # Take from the route that has the material now (a direct link before a relay).
        for s_kme in routes:
            routes[s_kme] = self.sim.network.route(self.kme_id, s_kme, bits) or routes[s_kme]
        primary = routes[self.sim.sae_kme(slave) or ""]
        keys = self.sim.make_keys(caller, slaves, number, size, primary, routes)
        if keys is None:
            stored = min(r.available_bits() for r in routes.values()) // size
            raise Reply(
                503,
                _short_message([(r, bits) for r in routes.values()], self.sim.network),
                [{"requested_key_count": number, "stored_key_count": stored}],
            )
        return keys

    async def dec_keys(self, request: web.Request) -> web.Response:
        try:
            caller = await self._prelude(request)
            master = request.match_info["sae"]
            _, route = self._route_to(caller, master, "master")
            if request.method == "GET":
                if set(request.query) != {"key_ID"} or len(request.query.getall("key_ID")) != 1:
                    raise bad("GET dec_keys takes exactly one key_ID; use POST for more")
                key_ids = [request.query["key_ID"]]
            else:
                if request.query:
                    raise bad("POST dec_keys takes its parameters in the body")
                key_ids = _key_ids(await json_body(request, allow_empty=False))
            if len(key_ids) > route.params.max_key_per_request:
                raise bad(
                    f"key_IDs exceeds max_key_per_request ({route.params.max_key_per_request})"
                )
            return json_response({"keys": self.sim.take_keys(master, caller, key_ids)})
        except Reply as r:
            return r.response()


def _short_message(demands: list[tuple[Route, int]], network: KeyNetwork) -> str:
    """Why enc_keys got no key: a satellite link between passes is named (it refills later)."""
    for pool in network.short_pools(demands):
        if not pool.link_up():
            nxt = pool.next_change_in_s()
            when = f" (next pass in {nxt:.1f} s)" if nxt is not None else ""
            return f"not enough key material: QKD link {pool.link_id} is between passes{when}"
    return "not enough key material on the QKD link for this request"


def _key_ids(body: Mapping[str, Any]) -> list[str]:
    entries = body.get("key_IDs")
    if not isinstance(entries, list) or not entries:
        raise bad("key_IDs must be a non-empty array")
    out: list[str] = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("key_ID"), str):
            raise bad("each key_IDs entry must be an object with a key_ID string")
        out.append(e["key_ID"])
    if len(set(out)) != len(out):
        raise bad("key_IDs repeats a key_ID")
    return out
