"""The KME simulator: one ETSI GS QKD 014 HTTPS server (mutual TLS) per KME of a topology.

All KMEs run in one event loop and share one key store, which is how keys handed to a
master reach the slave's KME. The calling SAE is the subject CN of its client
certificate. The request path does no disk I/O and no PKI work: certificates are made
once at start, keys come from os.urandom, and pools are counters (see pools.py).

The ETSI routes are in etsi.py, the admin routes in admin.py, TLS and the
caller's identity in tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kms_client.sim.admin import AdminHandlers
from kms_client.sim.etsi import KmeHandlers
from kms_client.sim.faults import Fault, parse_fault
from kms_client.sim.http import Reply, bad
from kms_client.sim.pki import Pki, ensure_pki
from kms_client.sim.pools import KeyNetwork, Route
from kms_client.sim.tls import server_ssl
from kms_client.sim.topology import Topology, load_topology

MSG_NOT_FOUND = "one or more keys specified are not found on KME"
# Keys a master took that a slave never fetched are kept this long, and at most
# this many in all (the oldest go first): a real KME's store is finite, and a
# master that fetches and drops keys must not grow the simulator without bound.
UNDELIVERED_TTL_S = 86400.0
MAX_UNDELIVERED = 200_000
# The key_IDs delivered per SAE that delivered_key_ids() remembers (tests' check
# that no key is handed out twice).
DELIVERED_MEMORY = 100_000


@dataclass(slots=True)
class _KeyRecord:
    master_sae: str
    slaves: frozenset[str]
    pending: set[str]
    ready_at: dict[str, float]  # slave SAE -> when the key has reached its KME
    extension: dict[str, object]
    key_b64: str = field(repr=False)
    made_at: float = 0.0


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
        self._delivered: dict[str, deque[str]] = {
            s: deque(maxlen=DELIVERED_MEMORY) for s in self._sae_kme}
        self.undelivered_dropped = 0  # keys dropped unfetched (age or the store's bound)
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
            KmeHandlers(self, kme.kme_id).install(app)
            assert self.pki is not None
            ctx = server_ssl(self.pki, kme.kme_id)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            site = web.TCPSite(runner, self.host, port, ssl_context=ctx, reuse_address=True)
            await site.start()
            bound = runner.addresses[0][1]
            self.urls[kme.kme_id] = f"https://{_url_host(self.host)}:{bound}"
        admin = web.Application(client_max_size=1 << 16)
        AdminHandlers(self).install(admin)
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
        self._drop_undelivered(now, number)
        ready = {s: now + self._faults[self._sae_kme[s]].key_delay_s for s in slaves}
        slave_set = frozenset(slaves)
        ext = route.extension
        out: list[dict[str, Any]] = []
        ids = self._delivered[master]
        for _ in range(number):
            key_id = str(uuid.uuid4())
            key_b64 = base64.b64encode(os.urandom(size // 8)).decode()
            self._keys[key_id] = _KeyRecord(master, slave_set, set(slaves), ready, ext, key_b64,
                                            now)
            if self.recorded_keys is not None:
                self.recorded_keys[key_id] = key_b64
            ids.append(key_id)
            out.append({"key_ID": key_id, "key_ID_extension": ext, "key": key_b64})
        return out

    def _drop_undelivered(self, now: float, room: int) -> None:
        """Drop the oldest unfetched keys: past their age, or to make `room` in the store.
        The store is in insertion order, so the oldest are first."""
        while self._keys:
            key_id, rec = next(iter(self._keys.items()))
            if now - rec.made_at < UNDELIVERED_TTL_S and len(self._keys) + room <= MAX_UNDELIVERED:
                return
            del self._keys[key_id]
            self.undelivered_dropped += 1

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
                raise Reply(401, "caller is not a slave SAE of these keys")
            if caller not in rec.pending or now < rec.ready_at[caller]:
                missing = True
            recs.append(rec)
        if missing:
            raise bad(MSG_NOT_FOUND)
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
