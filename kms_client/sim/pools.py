"""Key pools and routes between KMEs (pure: no I/O; the clock is injected).

A pool is the secret key material two KMEs share over one QKD link (or one pair of
end nodes of an MDI hub): it grows at the link's secret key rate up to its capacity
and shrinks by every key handed out. Routes say which pools pay for a key between
two KMEs: one pool for a direct link or hub pair, every hop's pool for a trusted-node
relay (the key is forwarded one-time-pad encrypted hop by hop), and the KME's own
random source for two SAEs of the same KME.

A link with a pass schedule (a satellite) refills its pool only during passes;
the key stored in a pass stays usable between passes. An MDI hub with
``shared: true`` has one pool that all its pairs of end nodes draw on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kms_client.sim.passes import PassSchedule
from kms_client.sim.topology import KeyParams, LinkSpec, Topology

Clock = Callable[[], float]


class KeyPool:
    """Secret bits shared by two KMEs, made at `rate_bps` up to `capacity_bits`.

    With a pass schedule the rate applies only while a pass is on; schedule times
    count from `origin` (a clock value: the simulator's start).
    """

    __slots__ = (
        "_bits",
        "_clock",
        "_holders",
        "_last",
        "capacity_bits",
        "link_id",
        "name",
        "origin",
        "passes",
        "rate_bps",
    )

    def __init__(
        self,
        name: str,
        rate_bps: float,
        capacity_bits: int,
        initial_bits: float,
        clock: Clock,
        *,
        passes: PassSchedule | None = None,
        origin: float | None = None,
        link_id: str | None = None,
    ) -> None:
        if rate_bps < 0 or capacity_bits < 0:
            raise ValueError("rate and capacity must not be negative")
        self.name = name
        self.link_id = link_id or name
        self.rate_bps = float(rate_bps)
        self.capacity_bits = int(capacity_bits)
        self.passes = passes
        self._clock = clock
        self._bits = float(min(max(initial_bits, 0.0), capacity_bits))
        self._last = clock()
        self.origin = self._last if origin is None else origin
        self._holders: set[str] = set()

    def _advance(self) -> None:
        now = self._clock()
        if not self._holders and now > self._last:
            if self.passes is None:
                up = now - self._last
            else:
                up = self.passes.up_time(self._last - self.origin, now - self.origin)
            self._bits = min(float(self.capacity_bits), self._bits + self.rate_bps * up)
        self._last = max(now, self._last)

    def set_origin(self, origin: float) -> None:
        """Count pass times from `origin` on; no pass falls before it (t < 0)."""
        self.origin = origin
        self._advance()

    def link_up(self) -> bool:
        """Whether the link is making key now (always, without a pass schedule)."""
        return self.passes is None or self.passes.is_up(self._clock() - self.origin)

    def next_change_in_s(self) -> float | None:
        """Seconds until the link goes up or down; None if it never changes."""
        if self.passes is None:
            return None
        return self.passes.next_change_in(self._clock() - self.origin)

    def configure(
        self,
        *,
        rate_bps: float | None = None,
        capacity_bits: int | None = None,
        available_bits: float | None = None,
    ) -> None:
        """Change the pool live (tests make it scarce or refill it); key made so far stays.

        Capacity applies first, so both may change at once; the stored bits are cut
        to a smaller capacity. A pool held empty (an empty_pools fault) stays empty.
        """
        for label, value in (
            ("rate_bps", rate_bps),
            ("capacity_bits", capacity_bits),
            ("available_bits", available_bits),
        ):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label}: must be a finite number at least 0")
        cap = self.capacity_bits if capacity_bits is None else int(capacity_bits)
        if available_bits is not None and available_bits > cap:
            raise ValueError(f"available_bits: must be at most capacity_bits ({cap})")
        if available_bits and self._holders:
            raise ValueError("available_bits: the pool is held empty by an empty_pools fault")
        self._advance()  # bits made at the old rate are kept
        if rate_bps is not None:
            self.rate_bps = float(rate_bps)
        self.capacity_bits = cap
        if available_bits is not None:
            self._bits = float(available_bits)
        self._bits = min(self._bits, float(cap))

    def available_bits(self) -> int:
        self._advance()
        return int(self._bits)

    def take(self, bits: int) -> bool:
        """Remove `bits` if that many are there; False (and nothing taken) otherwise."""
        self._advance()
        if bits < 0:
            raise ValueError("bits must not be negative")
        if self._bits < bits:
            return False
        self._bits -= bits
        return True

    def hold_empty(self, holder: str) -> None:
        """Drain now and make nothing until every holder has released (a link down)."""
        self._advance()
        self._holders.add(holder)
        self._bits = 0.0

    def release(self, holder: str) -> None:
        self._advance()
        self._holders.discard(holder)

    @property
    def held(self) -> bool:
        return bool(self._holders)

    def __repr__(self) -> str:
        return (
            f"KeyPool({self.name!r}, rate_bps={self.rate_bps}, capacity_bits={self.capacity_bits})"
        )


@dataclass(frozen=True)
class Route:
    """How keys get from a master's KME to one slave's KME."""

    kind: str  # "local", "point_to_point", "mdi_hub" or "trusted_relay"
    link_id: str
    path: tuple[str, ...]  # node path from master KME to slave KME (the hub included)
    pools: tuple[KeyPool, ...]
    params: KeyParams
    extension: dict[str, object] = field(compare=False)

    def available_bits(self) -> int:
        return min(p.available_bits() for p in self.pools)

    def capacity_bits(self) -> int:
        return min(p.capacity_bits for p in self.pools)


def _route(
    kind: str, link_id: str, path: tuple[str, ...], pools: tuple[KeyPool, ...], params: KeyParams
) -> Route:
    ext: dict[str, object] = {"qsgw_route": {"kind": kind, "link": link_id, "path": list(path)}}
    return Route(kind, link_id, path, pools, params, ext)


class KeyNetwork:
    """Every pool and route of a topology."""

    def __init__(self, topology: Topology, clock: Clock, origin: float | None = None) -> None:
        self.clock = clock
        # Pass schedules count from here; Simulator.open moves it to the start (set_origin).
        self.origin = clock() if origin is None else origin
        self.pools: dict[str, KeyPool] = {}
        self._kme_pools: dict[str, list[KeyPool]] = {k.kme_id: [] for k in topology.kmes}
        # (master KME, slave KME) -> routes, direct ones before relays
        self._routes: dict[tuple[str, str], list[Route]] = {}
        hop_pools: dict[frozenset[str], tuple[KeyPool, LinkSpec]] = {}
        for kme in topology.kmes:
            pool = self._add_pool(
                f"local:{kme.kme_id}",
                kme.local_rate_bps,
                kme.local_capacity_bits,
                1.0,
                (kme.kme_id,),
            )
            self._add(
                kme.kme_id,
                kme.kme_id,
                _route("local", "local", (kme.kme_id,), (pool,), topology.defaults),
            )
        for link in topology.links:
            if link.kind == "trusted_relay":
                continue
            # A shared hub time-shares one key supply between its pairs: one pool.
            shared = None
            if link.shared:
                shared = self._link_pool(link.link_id, link, link.kmes)
            for a, b in itertools.combinations(link.kmes, 2):
                if shared is not None:
                    pool = shared
                elif link.kind == "point_to_point":
                    pool = self._link_pool(link.link_id, link, (a, b))
                else:
                    pool = self._link_pool(f"{link.link_id}:{a}-{b}", link, (a, b))
                hop_pools.setdefault(frozenset((a, b)), (pool, link))
                mid = (link.hub,) if link.hub else ()
                for x, y in ((a, b), (b, a)):
                    self._add(
                        x, y, _route(link.kind, link.link_id, (x, *mid, y), (pool,), link.params)
                    )
        for link in topology.links:
            if link.kind != "trusted_relay":
                continue
            hops = [hop_pools[frozenset(h)] for h in itertools.pairwise(link.kmes)]
            params = _narrowest([link.params, *(lk.params for _, lk in hops)])
            pools = tuple(p for p, _ in hops)
            a, b = link.kmes[0], link.kmes[-1]
            self._add(a, b, _route("trusted_relay", link.link_id, link.kmes, pools, params))
            self._add(b, a, _route("trusted_relay", link.link_id, link.kmes[::-1], pools, params))
        for routes in self._routes.values():
            routes.sort(key=lambda r: r.kind == "trusted_relay")

    def _add_pool(
        self,
        name: str,
        rate: float,
        cap: int,
        fill: float,
        kmes: Sequence[str],
        link: LinkSpec | None = None,
    ) -> KeyPool:
        pool = KeyPool(
            name,
            rate,
            cap,
            cap * fill,
            self.clock,
            passes=link.passes if link else None,
            origin=self.origin,
            link_id=link.link_id if link else None,
        )
        self.pools[name] = pool
        for k in kmes:
            self._kme_pools[k].append(pool)
        return pool

    def _link_pool(self, name: str, link: LinkSpec, kmes: Sequence[str]) -> KeyPool:
        return self._add_pool(
            name, link.rate_bps, link.capacity_bits, link.initial_fill, kmes, link
        )

    def set_origin(self, origin: float) -> None:
        """Count every pass schedule from `origin` (the simulator's start) on."""
        self.origin = origin
        for pool in self.pools.values():
            pool.set_origin(origin)

    def _add(self, a: str, b: str, route: Route) -> None:
        self._routes.setdefault((a, b), []).append(route)

    def route(self, master_kme: str, slave_kme: str, bits: int = 0) -> Route | None:
        """The route for keys from master_kme to slave_kme: the first that has `bits` now."""
        routes = self._routes.get((master_kme, slave_kme))
        if not routes:
            return None
        for r in routes:
            if r.available_bits() >= bits:
                return r
        return routes[0]

    def take(self, demands: Sequence[tuple[Route, int]]) -> bool:
        """Take bits from every route's pools at once, or nothing if any pool falls short."""
        need = _needs(demands)
        if any(pool.available_bits() < bits for pool, bits in need):
            return False
        for pool, bits in need:
            taken = pool.take(bits)
            assert taken  # checked above; the clock only adds bits
        return True

    def hold_empty(self, kme_id: str, empty: bool) -> None:
        """Drain and hold (or release) every pool that KME takes part in."""
        for pool in self._kme_pools[kme_id]:
            if empty:
                pool.hold_empty(kme_id)
            else:
                pool.release(kme_id)

    def short_pools(self, demands: Sequence[tuple[Route, int]]) -> list[KeyPool]:
        """The pools that cannot pay their share of these demands now (see take)."""
        return [pool for pool, bits in _needs(demands) if pool.available_bits() < bits]

    def pool_snapshot(self, name: str) -> dict[str, object]:
        p = self.pools[name]
        out: dict[str, object] = {
            "available_bits": p.available_bits(),
            "capacity_bits": p.capacity_bits,
            "rate_bps": p.rate_bps,
            "held_empty": p.held,
        }
        if p.passes is not None:
            out["link_up"] = p.link_up()
            nxt = p.next_change_in_s()
            out["next_change_in_s"] = None if nxt is None else round(nxt, 3)
        return out

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {name: self.pool_snapshot(name) for name in self.pools}


def _needs(demands: Sequence[tuple[Route, int]]) -> list[tuple[KeyPool, int]]:
    """Bits owed per pool: routes that share a pool (a relay hop, a shared hub) add up."""
    need: dict[int, tuple[KeyPool, int]] = {}
    for route, bits in demands:
        for pool in route.pools:
            need[id(pool)] = (pool, need.get(id(pool), (pool, 0))[1] + bits)
    return list(need.values())


def _narrowest(params: Sequence[KeyParams]) -> KeyParams:
    """Limits every hop of a relay can meet."""
    lo = max(p.min_key_size for p in params)
    hi = min(p.max_key_size for p in params)
    return KeyParams(
        key_size=min(max(params[0].key_size, lo), hi),
        min_key_size=lo,
        max_key_size=hi,
        max_key_per_request=min(p.max_key_per_request for p in params),
        max_sae_id_count=min(p.max_sae_id_count for p in params),
    )
