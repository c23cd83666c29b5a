"""The KME simulator: one ETSI GS QKD 014 HTTPS server (mutual TLS) per KME of a topology.

All KMEs run in one event loop and share one key store, which is how keys handed to a
master reach the slave's KME. The calling SAE is the subject CN of its client
certificate. The request path does no disk I/O and no PKI work: certificates are made
once at start, keys come from os.urandom, and pools are counters (see pools.py).

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

import asyncio
import base64
import contextlib
import json
import math
import os
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kms_client.sim.faults import Fault, FaultError, parse_fault
from kms_client.sim.pki import Pki, ensure_pki
from kms_client.sim.pools import KeyNetwork, Route
from kms_client.sim.topology import KeyParams, Topology, load_topology

API = "/api/v1/keys"
MSG_EXT_MANDATORY = "not all extension_mandatory parameters are supported"
MSG_SIZE_8 = "size shall be a multiple of 8"
MSG_NOT_FOUND = "one or more keys specified are not found on KME"


class _Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.details:
            body["details"] = self.details
        return _json(body, self.status)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


def _bad(message: str) -> _Reply:
    return _Reply(400, message)


@dataclass(slots=True)
class _KeyRecord:
    master_sae: str
    slaves: frozenset[str]
    pending: set[str]
    ready_at: dict[str, float]  # slave SAE -> when the key has reached its KME
    extension: dict[str, object]
    key_b64: str = field(repr=False)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Simulator:
    """Every KME of a topology, serving over HTTPS with client certificates."""

    def __init__(
        self,
        topology: Topology,
        state_dir: Path,
        host: str,
        *,
        base_port: int | None,
        admin_port: int,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        record_keys: bool = False,
    ) -> None:
        self.topology = topology
        # Test aid, off by default: keep every key handed out so that a test can
        # search a gateway's outputs for QKD key material. Never on in a real KME.
        self.recorded_keys: dict[str, str] | None = {} if record_keys else None
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self._base_port = base_port
        self._admin_port = admin_port
        self._clock = clock
        self._rng = random.Random(seed)  # fault dice, not key material
        self._sae_kme = topology.sae_kme()
        self.network = KeyNetwork(topology, clock)
        self._faults: dict[str, Fault] = {k.kme_id: Fault() for k in topology.kmes}
        self._keys: dict[str, _KeyRecord] = {}
        self._delivered: dict[str, list[str]] = {s: [] for s in self._sae_kme}
        self._runners: list[web.AppRunner] = []
        self._started_at = clock()
        self.pki: Pki | None = None
        self.endpoints: dict[str, Any] = {}
        self.admin_url = ""
        self.urls: dict[str, str] = {}
        for kme in topology.kmes:
            self.set_fault(kme.kme_id, **kme.fault.to_json())

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        topology_path: Path | str,
        state_dir: Path | str,
        host: str = "127.0.0.1",
        *,
        base_port: int | None = 0,
        admin_port: int = 0,
        seed: int | None = None,
        record_keys: bool = False,
    ) -> AsyncIterator[Simulator]:
        """Start every KME; base_port 0 picks free ports, None takes the topology's ports."""
        sim = cls(
            load_topology(topology_path),
            Path(state_dir),
            host,
            base_port=base_port,
            admin_port=admin_port,
            record_keys=record_keys,
            seed=seed,
        )
        try:
            await sim.open()
            yield sim
        finally:
            await sim.close()

    async def open(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A reader polling for endpoints.json must never see the last run's.
        (self.state_dir / "endpoints.json").unlink(missing_ok=True)
        kme_ids = [k.kme_id for k in self.topology.kmes]
        self.pki = await asyncio.to_thread(
            ensure_pki, self.state_dir, kme_ids, list(self._sae_kme), [self.host]
        )
        self._started_at = self._clock()
        self.network.set_origin(self._started_at)  # passes count from the start, like outages
        for i, kme in enumerate(self.topology.kmes):
            if self._base_port is None:
                port = kme.port or 0
            else:
                port = self._base_port + i if self._base_port else 0
            app = web.Application(client_max_size=1 << 20)
            _KmeHandlers(self, kme.kme_id).install(app)
            ctx = self._server_ssl(kme.kme_id)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, self.host, port, ssl_context=ctx, reuse_address=True)
            await site.start()
            bound = runner.addresses[0][1]
            self.urls[kme.kme_id] = f"https://{_url_host(self.host)}:{bound}"
        admin = web.Application(client_max_size=1 << 16)
        _AdminHandlers(self).install(admin)
        runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", self._admin_port, reuse_address=True).start()
        self.admin_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.endpoints = self._endpoints()
        data = (json.dumps(self.endpoints, indent=2) + "\n").encode()
        await asyncio.to_thread(_write_public, self.state_dir / "endpoints.json", data)

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for r in runners:
            await r.cleanup()

    def _server_ssl(self, kme_id: str) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.pki.ca_cert))
        pair = self.pki.kmes[kme_id]
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
        return ctx

    def _endpoints(self) -> dict[str, Any]:
        assert self.pki is not None
        ca = str(self.pki.ca_cert)
        return {
            "kmes": {k: {"url": url, "ca": ca} for k, url in self.urls.items()},
            "saes": {
                s: {"kme": k, "cert": str(self.pki.saes[s].cert), "key": str(self.pki.saes[s].key)}
                for s, k in self._sae_kme.items()
            },
            "pairs": [list(p) for p in self.topology.pairs],
            "admin": self.admin_url,
        }

    # -- faults and inspection (tests, admin endpoint) -----------------------------------

    def set_fault(self, kme_id: str, **fault: Any) -> Fault:
        """Replace the fault of one KME (fields as in faults.Fault; unnamed ones are healthy)."""
        if kme_id not in self._faults:
            raise KeyError(f"unknown KME {kme_id!r}")
        new = parse_fault(fault)
        old = self._faults[kme_id]
        if new.empty_pools != old.empty_pools:
            self.network.hold_empty(kme_id, new.empty_pools)
        self._faults[kme_id] = new
        return new

    def update_fault(self, kme_id: str, **changes: Any) -> Fault:
        """Change some fields of one KME's fault, keeping the others."""
        if kme_id not in self._faults:
            raise KeyError(f"unknown KME {kme_id!r}")
        merged = parse_fault(changes, base=self._faults[kme_id]).to_json()
        return self.set_fault(kme_id, **merged)

    def drain_pools(self, kme_id: str) -> None:
        """Empty every pool of that KME once; they refill at their rates from now."""
        if kme_id not in self._faults:
            raise KeyError(f"unknown KME {kme_id!r}")
        self.network.hold_empty(kme_id, True)
        if not self._faults[kme_id].empty_pools:
            self.network.hold_empty(kme_id, False)

    def clear_faults(self, kme_id: str | None = None) -> None:
        for k in [kme_id] if kme_id else list(self._faults):
            self.set_fault(k)

    def faults(self) -> dict[str, Fault]:
        return dict(self._faults)

    def delivered_key_ids(self, sae_id: str) -> list[str]:
        """Every key_ID delivered to that SAE (as master or slave), in order."""
        return list(self._delivered.get(sae_id, ()))

    def pending_key_count(self) -> int:
        return len(self._keys)

    # -- the key store -----------------------------------------------------------------

    def fault(self, kme_id: str) -> Fault:
        return self._faults[kme_id]

    def since_start(self) -> float:
        return self._clock() - self._started_at

    def roll(self, rate: float) -> bool:
        return self._rng.random() < rate

    def sae_kme(self, sae_id: str) -> str | None:
        return self._sae_kme.get(sae_id)

    def make_keys(
        self,
        master: str,
        slaves: list[str],
        number: int,
        size: int,
        route: Route,
        slave_routes: Mapping[str, Route],
    ) -> list[dict[str, Any]] | None:
        """Take the material from the pools and store keys for the slaves; None if short."""
        bits = number * size
        if not self.network.take([(r, bits) for r in slave_routes.values()]):
            return None
        now = self._clock()
        ready = {s: now + self._faults[self._sae_kme[s]].key_delay_s for s in slaves}
        slave_set = frozenset(slaves)
        ext = route.extension
        out: list[dict[str, Any]] = []
        ids = self._delivered[master]
        for _ in range(number):
            key_id = str(uuid.uuid4())
            key_b64 = base64.b64encode(os.urandom(size // 8)).decode()
            self._keys[key_id] = _KeyRecord(master, slave_set, set(slaves), ready, ext, key_b64)
            if self.recorded_keys is not None:
                self.recorded_keys[key_id] = key_b64
            ids.append(key_id)
            out.append({"key_ID": key_id, "key_ID_extension": ext, "key": key_b64})
        return out

    def take_keys(self, master: str, caller: str, key_ids: list[str]) -> list[dict[str, Any]]:
        """Hand the named keys to a slave once, all or none."""
        now = self._clock()
        recs: list[_KeyRecord] = []
        missing = False
        for kid in key_ids:
            rec = self._keys.get(kid)
            if rec is None or rec.master_sae != master:
                missing = True
                continue
            if caller not in rec.slaves:
                raise _Reply(401, "caller is not a slave SAE of these keys")
            if caller not in rec.pending or now < rec.ready_at[caller]:
                missing = True
            recs.append(rec)
        if missing:
            raise _bad(MSG_NOT_FOUND)
        out: list[dict[str, Any]] = []
        ids = self._delivered[caller]
        for kid, rec in zip(key_ids, recs, strict=True):
            rec.pending.discard(caller)
            if not rec.pending:
                del self._keys[kid]
            ids.append(kid)
            out.append({"key_ID": kid, "key_ID_extension": rec.extension, "key": rec.key_b64})
        return out


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _common_name(peercert: object) -> str | None:
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _int_param(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer")
    return value


def _query_int(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 9:
        raise _bad(f"{name} must be a positive decimal integer")
    return int(value)


class _KmeHandlers:
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
            raise _Reply(503, "KME outage (simulated)")
        if fault.error_rate and self.sim.roll(fault.error_rate):
            raise _Reply(503, "KME temporarily unavailable (simulated)")
        transport = request.transport
        caller = _common_name(transport.get_extra_info("peercert")) if transport else None
        if caller is None or self.sim.sae_kme(caller) != self.kme_id:
            raise _Reply(401, "the client certificate names no SAE served by this KME")
        return caller

    def _route_to(self, caller: str, slave: str, role: str) -> tuple[str, Route]:
        slave_kme = self.sim.sae_kme(slave)
        if slave_kme is None:
            raise _bad(f"unknown {role} SAE ID")
        # A master asking dec_keys for its own keys is answered 401 by the key store.
        if slave == caller and role == "slave":
            raise _bad(f"{role} SAE ID must differ from the caller's")
        route = self.sim.network.route(self.kme_id, slave_kme)
        if route is None:
            raise _bad(f"no QKD link from {self.kme_id} to {slave_kme}")
        return slave_kme, route

    async def noop(self, request: web.Request) -> web.Response:
        try:
            await self._prelude(request)
        except _Reply as r:
            return r.response()
        return _json({})

    async def status(self, request: web.Request) -> web.Response:
        try:
            caller = await self._prelude(request)
            slave = request.match_info["sae"]
            slave_kme, route = self._route_to(caller, slave, "slave")
        except _Reply as r:
            return r.response()
        p = route.params
        return _json(
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
            return _json({"keys": self._enc(caller, slave, route, req)})
        except _Reply as r:
            return r.response()

    async def _enc_request(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            extra = set(request.query) - {"number", "size"}
            if extra:
                raise _bad("GET enc_keys takes only number and size; use POST for other parameters")
            return {k: _query_int(v, k) for k, v in request.query.items()}
        if request.query:
            raise _bad("POST enc_keys takes its parameters in the body")
        return await _json_body(request, allow_empty=True)

    def _enc(
        self, caller: str, slave: str, route: Route, req: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        mandatory = req.get("extension_mandatory")
        optional = req.get("extension_optional")
        for name, ext in (("extension_mandatory", mandatory), ("extension_optional", optional)):
            if ext is not None and not (
                isinstance(ext, list) and all(isinstance(e, dict) for e in ext)
            ):
                raise _bad(f"{name} must be an array of objects")
        if mandatory:
            raise _bad(MSG_EXT_MANDATORY)
        p: KeyParams = route.params
        number = _int_param(req.get("number", 1), "number")
        size = _int_param(req.get("size", p.key_size), "size")
        if number < 1:
            raise _bad("number must be at least 1")
        if number > p.max_key_per_request:
            raise _bad(f"number exceeds max_key_per_request ({p.max_key_per_request})")
        if size < 1:
            raise _bad("size must be positive")
        if size % 8:
            raise _bad(MSG_SIZE_8)
        if not p.min_key_size <= size <= p.max_key_size:
            raise _bad(
                f"size must be between min_key_size ({p.min_key_size}) "
                f"and max_key_size ({p.max_key_size})"
            )
        extra_raw = req.get("additional_slave_SAE_IDs", [])
        if not isinstance(extra_raw, list) or not all(isinstance(s, str) for s in extra_raw):
            raise _bad("additional_slave_SAE_IDs must be an array of strings")
        if len(extra_raw) > p.max_sae_id_count:
            raise _bad(f"additional_slave_SAE_IDs exceeds max_SAE_ID_count ({p.max_sae_id_count})")
        slaves = [slave, *extra_raw]
        if len(set(slaves)) != len(slaves):
            raise _bad("additional_slave_SAE_IDs repeats a slave SAE ID")
        routes: dict[str, Route] = {}
        for s in slaves:
            s_kme, r = self._route_to(caller, s, "slave")
            if s_kme not in routes:
                if not r.params.min_key_size <= size <= r.params.max_key_size:
                    raise _bad(f"size not supported on the link to {s_kme}")
                routes[s_kme] = r
        bits = number * size
        # Take from the route that has the material now (a direct link before a relay).
        for s_kme in routes:
            routes[s_kme] = self.sim.network.route(self.kme_id, s_kme, bits) or routes[s_kme]
        primary = routes[self.sim.sae_kme(slave) or ""]
        keys = self.sim.make_keys(caller, slaves, number, size, primary, routes)
        if keys is None:
            stored = min(r.available_bits() for r in routes.values()) // size
            raise _Reply(
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
                    raise _bad("GET dec_keys takes exactly one key_ID; use POST for more")
                key_ids = [request.query["key_ID"]]
            else:
                if request.query:
                    raise _bad("POST dec_keys takes its parameters in the body")
                key_ids = _key_ids(await _json_body(request, allow_empty=False))
            if len(key_ids) > route.params.max_key_per_request:
                raise _bad(
                    f"key_IDs exceeds max_key_per_request ({route.params.max_key_per_request})"
                )
            return _json({"keys": self.sim.take_keys(master, caller, key_ids)})
        except _Reply as r:
            return r.response()


def _short_message(demands: list[tuple[Route, int]], network: KeyNetwork) -> str:
    """Why enc_keys got no key: a satellite link between passes is named (it refills later)."""
    for pool in network.short_pools(demands):
        if not pool.link_up():
            nxt = pool.next_change_in_s()
            when = f" (next pass in {nxt:.1f} s)" if nxt is not None else ""
            return f"not enough key material: QKD link {pool.link_id} is between passes{when}"
    return "not enough key material on the QKD link for this request"


POOL_FIELDS = ("rate_bps", "capacity_bits", "available_bits")


def _pool_changes(body: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in body.items():
        if name not in POOL_FIELDS:
            raise _bad(f"{name}: unknown field; allowed: {', '.join(POOL_FIELDS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _bad(f"{name}: must be a number at least 0")
        out[name] = value
    return out


async def _json_body(request: web.Request, allow_empty: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise _bad("request body must be a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def _key_ids(body: Mapping[str, Any]) -> list[str]:
    entries = body.get("key_IDs")
    if not isinstance(entries, list) or not entries:
        raise _bad("key_IDs must be a non-empty array")
    out: list[str] = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("key_ID"), str):
            raise _bad("each key_IDs entry must be an object with a key_ID string")
        out.append(e["key_ID"])
    if len(set(out)) != len(out):
        raise _bad("key_IDs repeats a key_ID")
    return out


class _AdminHandlers:
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
        return _json({k: f.to_json() for k, f in self.sim.faults().items()})

    async def put_fault(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return _json({"message": f"unknown KME {kme!r}"}, 404)
        try:
            body = await _json_body(request, allow_empty=True)
            if request.method == "PATCH":
                fault = self.sim.update_fault(kme, **body)
            else:
                fault = self.sim.set_fault(kme, **body)
        except _Reply as r:
            return r.response()
        except FaultError as exc:
            return _json({"message": str(exc)}, 400)
        return _json(fault.to_json())

    async def drain(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return _json({"message": f"unknown KME {kme!r}"}, 404)
        self.sim.drain_pools(kme)
        return _json({})

    async def delete_fault(self, request: web.Request) -> web.Response:
        kme = request.match_info["kme"]
        if kme not in self.sim.faults():
            return _json({"message": f"unknown KME {kme!r}"}, 404)
        self.sim.clear_faults(kme)
        return _json({})

    async def delete_faults(self, request: web.Request) -> web.Response:
        self.sim.clear_faults()
        return _json({})

    async def pools(self, request: web.Request) -> web.Response:
        return _json(self.sim.network.snapshot())

    async def put_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["pool"]
        pool = self.sim.network.pools.get(name)
        if pool is None:
            return _json({"message": f"unknown pool {name!r}"}, 404)
        try:
            changes = _pool_changes(await _json_body(request, allow_empty=True))
            cap = changes.get("capacity_bits")
            pool.configure(
                rate_bps=changes.get("rate_bps"),
                capacity_bits=None if cap is None else int(cap),
                available_bits=changes.get("available_bits"),
            )
        except _Reply as r:
            return r.response()
        except ValueError as exc:
            return _json({"message": str(exc)}, 400)
        return _json(self.sim.network.pool_snapshot(name))

    async def recorded_keys(self, request: web.Request) -> web.Response:
        if self.sim.recorded_keys is None:
            return _json({"message": "key recording is off (--record-keys-for-tests)"}, 404)
        return _json({"keys": self.sim.recorded_keys})

    async def delivered(self, request: web.Request) -> web.Response:
        sae = request.match_info["sae"]
        if self.sim.sae_kme(sae) is None:
            return _json({"message": f"unknown SAE {sae!r}"}, 404)
        return _json({"sae_ID": sae, "key_IDs": self.sim.delivered_key_ids(sae)})
