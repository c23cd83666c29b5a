"""The pure pool and route logic, with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms_client.sim.pools import KeyNetwork, KeyPool
from kms_client.sim.topology import parse_topology


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pool_grows_at_its_rate_up_to_capacity() -> None:
    clock = Clock()
    pool = KeyPool("p", rate_bps=256, capacity_bits=1024, initial_bits=0, clock=clock)
    assert pool.available_bits() == 0
    clock.now += 2
    assert pool.available_bits() == 512
    clock.now += 100
    assert pool.available_bits() == 1024


def test_pool_runs_out_when_used_faster_than_made_and_refills() -> None:
    clock = Clock()
    pool = KeyPool("p", rate_bps=256, capacity_bits=2048, initial_bits=2048, clock=clock)
    taken = 0
    while pool.take(256):
        taken += 1
        assert taken < 100
    assert taken == 8
    assert not pool.take(256)
    assert pool.available_bits() == 0
    clock.now += 1
    assert pool.take(256)
    assert not pool.take(8)


def test_failed_take_takes_nothing() -> None:
    pool = KeyPool("p", 0, 1000, 1000, Clock())
    assert not pool.take(1001)
    assert pool.available_bits() == 1000


def test_held_pool_is_empty_and_makes_nothing_until_every_holder_releases() -> None:
    clock = Clock()
    pool = KeyPool("p", 100, 10_000, 10_000, clock)
    pool.hold_empty("KME_A")
    pool.hold_empty("KME_B")
    clock.now += 10
    assert pool.available_bits() == 0
    pool.release("KME_A")
    clock.now += 10
    assert pool.available_bits() == 0
    pool.release("KME_B")
    clock.now += 10
    assert pool.available_bits() == 1000


def test_clock_going_backwards_adds_nothing() -> None:
    clock = Clock()
    pool = KeyPool("p", 100, 10_000, 0, clock)
    clock.now -= 50
    assert pool.available_bits() == 0
    clock.now += 60
    assert pool.available_bits() == 1000


@given(
    rate=st.floats(0, 1e6),
    cap=st.integers(0, 10**7),
    steps=st.lists(st.tuples(st.floats(0, 100), st.integers(0, 10**6)), max_size=30),
)
def test_pool_never_exceeds_capacity_nor_goes_negative(
    rate: float, cap: int, steps: list[tuple[float, int]]
) -> None:
    clock = Clock()
    pool = KeyPool("p", rate, cap, cap, clock)
    for dt, bits in steps:
        clock.now += dt
        before = pool.available_bits()
        ok = pool.take(bits)
        after = pool.available_bits()
        assert 0 <= after <= cap
        assert ok == (bits <= before)
        assert after == (before - bits if ok else before)


NET = """
name: net
kmes:
  - {id: A, saes: [SA, SA2]}
  - {id: B, saes: [SB]}
  - {id: C, saes: [SC]}
  - {id: D, saes: [SD]}
  - {id: E, saes: [SE]}
links:
  - {id: hub, kind: mdi_hub, hub: H, ends: [A, B, C], rate_bps: 100, capacity_bits: 4096}
  - {id: cd, kind: point_to_point, kmes: [C, D], rate_bps: 50, capacity_bits: 4096}
  - {id: de, kind: point_to_point, kmes: [D, E], rate_bps: 0, capacity_bits: 2048}
  - {id: ce, kind: trusted_relay, path: [C, D, E]}
"""


def network() -> tuple[KeyNetwork, Clock]:
    clock = Clock()
    return KeyNetwork(parse_topology(__import__("yaml").safe_load(NET)), clock), clock


def test_hub_gives_every_pair_of_end_nodes_its_own_pool_through_the_hub() -> None:
    net, _ = network()
    ab, ac, bc = net.route("A", "B"), net.route("A", "C"), net.route("B", "C")
    assert ab is not None and ac is not None and bc is not None
    assert ab.path == ("A", "H", "B")
    assert net.route("B", "A") is not None and net.route("B", "A").path == ("B", "H", "A")  # type: ignore[union-attr]
    assert len({id(ab.pools[0]), id(ac.pools[0]), id(bc.pools[0])}) == 3
    assert net.take([(ab, 4096)])
    assert ab.available_bits() == 0
    assert ac.available_bits() == 4096  # one pair's use leaves the others alone


def test_relay_pays_on_every_hop_and_shows_its_path() -> None:
    net, clock = network()
    ce = net.route("C", "E")
    assert ce is not None
    assert ce.kind == "trusted_relay"
    assert ce.path == ("C", "D", "E")
    assert ce.extension["qsgw_route"] == {
        "kind": "trusted_relay",
        "link": "ce",
        "path": ["C", "D", "E"],
    }
    cd, de = net.route("C", "D"), net.route("D", "E")
    assert cd is not None and de is not None
    assert net.take([(ce, 1024)])
    assert cd.available_bits() == 3072
    assert de.available_bits() == 1024
    # The relay is limited by its slowest hop: D-E makes nothing.
    assert not net.take([(ce, 2048)])
    assert cd.available_bits() == 3072  # a refused take takes nothing from any hop
    clock.now += 100
    assert ce.available_bits() == 1024


def test_no_route_between_unlinked_kmes_and_same_kme_uses_local_source() -> None:
    net, _ = network()
    assert net.route("A", "D") is None
    local = net.route("A", "A")
    assert local is not None and local.kind == "local"


def test_multicast_take_is_all_or_nothing_across_routes_sharing_a_pool() -> None:
    net, _ = network()
    cd, ce = net.route("C", "D"), net.route("C", "E")
    assert cd is not None and ce is not None
    # Both routes draw on pool cd: 2 x 2048 fits its 4096, but de has only 2048.
    assert not net.take([(cd, 2048), (ce, 4096)])
    assert cd.available_bits() == 4096
    assert net.take([(cd, 2048), (ce, 2048)])
    assert cd.available_bits() == 0
    assert net.route("D", "E").available_bits() == 0  # type: ignore[union-attr]


def test_empty_pools_fault_holds_every_pool_of_that_kme() -> None:
    net, clock = network()
    net.hold_empty("C", True)
    for other in ("A", "B", "D", "E"):
        r = net.route("C", other)
        assert r is not None and r.available_bits() == 0
    ab = net.route("A", "B")
    assert ab is not None and ab.available_bits() == 4096
    net.hold_empty("C", False)
    clock.now += 10
    cd = net.route("C", "D")
    assert cd is not None and cd.available_bits() == 500


def test_negative_pool_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        KeyPool("p", -1, 10, 0, Clock())


SHARED = NET.replace(
    "capacity_bits: 4096}\n  - {id: cd", "capacity_bits: 4096, shared: true}\n  - {id: cd"
)


def test_shared_hub_is_one_pool_that_every_pair_draws_on() -> None:
    assert SHARED != NET
    clock = Clock()
    net = KeyNetwork(parse_topology(__import__("yaml").safe_load(SHARED)), clock)
    assert "hub" in net.pools and not any(n.startswith("hub:") for n in net.pools)
    ab, ac, bc = net.route("A", "B"), net.route("A", "C"), net.route("B", "C")
    assert ab is not None and ac is not None and bc is not None
    assert ab.pools == ac.pools == bc.pools == (net.pools["hub"],)
    # Each pair keeps its own route (and so its own keys and key_ID_extension).
    assert (ab.path, ac.path, bc.path) == (("A", "H", "B"), ("A", "H", "C"), ("B", "H", "C"))
    assert net.take([(ab, 3072)])
    assert ac.available_bits() == bc.available_bits() == 1024  # A-B's use left less for all
    assert net.take([(bc, 1024)])
    assert not net.take([(ac, 8)])
    # The whole hub's rate, not one per pair: 100 bit/s shared.
    clock.now += 10
    assert net.snapshot()["hub"]["available_bits"] == 1000
    # Multicast over two pairs of one shared hub pays twice from the one pool.
    assert not net.take([(ab, 512), (ac, 512)])
    assert net.take([(ab, 500), (ac, 500)])


def test_unshared_hub_keeps_one_pool_per_pair() -> None:
    net, _ = network()
    assert sorted(n for n in net.pools if n.startswith("hub")) == ["hub:A-B", "hub:A-C", "hub:B-C"]


def test_shared_hub_pool_is_held_by_an_empty_pools_fault_at_any_end() -> None:
    clock = Clock()
    net = KeyNetwork(parse_topology(__import__("yaml").safe_load(SHARED)), clock)
    net.hold_empty("A", True)
    bc = net.route("B", "C")
    assert bc is not None and bc.available_bits() == 0
    net.hold_empty("A", False)
    clock.now += 1
    assert bc.available_bits() == 100


def test_configure_changes_a_pool_live_and_keeps_what_was_made() -> None:
    clock = Clock()
    pool = KeyPool("p", 100, 10_000, 0, clock)
    clock.now += 10
    pool.configure(rate_bps=0)
    assert pool.available_bits() == 1000  # made at the old rate before the change
    clock.now += 10
    assert pool.available_bits() == 1000
    pool.configure(capacity_bits=512)
    assert (pool.available_bits(), pool.capacity_bits) == (512, 512)
    pool.configure(capacity_bits=4096, available_bits=4000)  # capacity applies first
    assert pool.available_bits() == 4000
    for bad in (
        {"available_bits": 5000.0},
        {"rate_bps": -1.0},
        {"rate_bps": float("nan")},
        {"capacity_bits": -1},
    ):
        with pytest.raises(ValueError):
            pool.configure(**bad)
    assert (pool.available_bits(), pool.rate_bps, pool.capacity_bits) == (4000, 0, 4096)
    pool.hold_empty("KME_A")
    with pytest.raises(ValueError, match="held empty"):
        pool.configure(available_bits=100)
    pool.configure(rate_bps=50)  # allowed while held; it applies once released
    pool.release("KME_A")
    clock.now += 2
    assert pool.available_bits() == 100
