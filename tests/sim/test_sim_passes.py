"""Satellite passes: the exact up-time integral, and pools that refill only during passes."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from kms_client.sim.passes import PassSchedule
from kms_client.sim.pools import KeyNetwork, KeyPool
from kms_client.sim.topology import parse_topology

SAT = PassSchedule(period_s=30, duration_s=10)  # up in [0, 10), [30, 40), ...


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("t0", "t1", "up"),
    [
        (0, 10, 10),  # exactly one pass
        (0, 30, 10),  # a pass and the gap after it
        (10, 30, 0),  # the gap alone: the pass ends at 10 (half-open)
        (9, 31, 2),  # the last second of one pass, the first of the next
        (5, 35, 10),  # the second half of a pass and the first half of the next
        (25, 45, 10),  # a whole pass inside a window that starts and ends down
        (3, 7, 4),  # inside one pass
        (12, 28, 0),  # inside one gap
        (0, 3000, 1000),  # 100 periods
        (7, 7, 0),
        (30, 10, 0),  # backwards: nothing
        (-50, 5, 5),  # nothing before the start: k >= 0 only
    ],
)
def test_up_time_over_pass_boundaries(t0: float, t1: float, up: float) -> None:
    assert SAT.up_time(t0, t1) == pytest.approx(up, abs=1e-9)


def test_up_time_with_an_offset() -> None:
    s = PassSchedule(period_s=100, duration_s=20, offset_s=50)  # up [50, 70), [150, 170)
    assert s.up_time(0, 50) == 0
    assert s.up_time(0, 60) == 10
    assert s.up_time(0, 170) == 40
    assert s.up_time(65, 155) == 10
    assert not s.is_up(0) and s.is_up(50) and not s.is_up(70) and s.is_up(169.9)
    assert s.next_change_in(0) == 50
    assert s.next_change_in(55) == 15
    assert s.next_change_in(70) == 80


def test_up_time_over_long_spans_is_exact() -> None:
    # A year of 30 s periods: no stepping, no drift.
    year = 365 * 86_400
    assert SAT.up_time(0, year) == pytest.approx(year / 3, rel=1e-12)
    late = 30.0 * 33_333_333  # a pass starts here, 31 years in
    assert SAT.up_time(late, late + 30 * 1000) == pytest.approx(10 * 1000, abs=1e-6)
    assert SAT.up_time(late + 12, late + 28) == pytest.approx(0, abs=1e-6)
    assert SAT.up_time(late + 9, late + 31) == pytest.approx(2, abs=1e-6)


def test_always_up_schedule_is_up_after_its_offset() -> None:
    s = PassSchedule(period_s=5, duration_s=5, offset_s=2)
    assert s.up_time(0, 100) == 98
    assert s.next_change_in(0) == 2
    assert s.next_change_in(3) is None
    assert s.is_up(1e6)


def test_next_change_at_the_boundaries() -> None:
    assert SAT.is_up(0) and not SAT.is_up(10) and SAT.is_up(30)
    assert SAT.next_change_in(0) == 10  # goes down at 10
    assert SAT.next_change_in(10) == 20  # comes up at 30
    assert SAT.next_change_in(29) == pytest.approx(1)
    assert SAT.next_change_in(31) == pytest.approx(9)


@pytest.mark.parametrize(
    "kw",
    [
        {"period_s": 0, "duration_s": 0},
        {"period_s": 10, "duration_s": 11},
        {"period_s": 10, "duration_s": 5, "offset_s": -1},
        {"period_s": math.inf, "duration_s": 5},
    ],
)
def test_bad_schedules_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PassSchedule(**kw)


@given(
    period=st.floats(0.5, 1e4),
    share=st.floats(0.01, 1.0),
    offset=st.floats(0, 1e4),
    a=st.floats(-1e3, 1e6),
    b=st.floats(-1e3, 1e6),
    c=st.floats(-1e3, 1e6),
)
def test_up_time_adds_up_and_stays_within_bounds(
    period: float, share: float, offset: float, a: float, b: float, c: float
) -> None:
    s = PassSchedule(period, period * share, offset)
    t0, t1, t2 = sorted((a, b, c))
    whole = s.up_time(t0, t2)
    assert whole == pytest.approx(s.up_time(t0, t1) + s.up_time(t1, t2), abs=1e-6)
    assert -1e-9 <= whole <= t2 - t0 + 1e-9
    # One whole period from any point after the offset holds exactly one pass.
    t = max(t0, offset)
    assert s.up_time(t, t + period) == pytest.approx(s.duration_s, abs=1e-6)


@given(start=st.floats(0, 100), length=st.floats(0, 100))
def test_up_time_matches_a_fine_step_count(start: float, length: float) -> None:
    s = PassSchedule(period_s=7, duration_s=3, offset_s=2)
    step = 0.01
    n = int(length / step)
    counted = sum(step for i in range(n) if s.is_up(start + (i + 0.5) * step))
    assert s.up_time(start, start + n * step) == pytest.approx(counted, abs=2 * step)


# -- pools -------------------------------------------------------------------------------


def test_pool_refills_only_during_passes_and_serves_stored_keys_between() -> None:
    clock = Clock()
    pool = KeyPool("sat", 100, 10_000, 0, clock, passes=SAT, origin=clock.now)
    clock.now += 5
    assert pool.link_up() and pool.next_change_in_s() == 5
    assert pool.available_bits() == 500
    clock.now += 20  # t = 25: the pass ended at 10
    assert not pool.link_up() and pool.next_change_in_s() == 5
    assert pool.available_bits() == 1000
    # Stored key stays usable between passes; nothing comes back until the next one.
    assert pool.take(600)
    clock.now += 4.5  # t = 29.5
    assert pool.available_bits() == 400
    assert not pool.take(500)
    clock.now += 5.5  # t = 35: five seconds into the next pass
    assert pool.available_bits() == 900
    assert pool.take(500)


def test_pool_with_passes_stops_at_capacity_over_a_long_gap_in_reads() -> None:
    clock = Clock()
    pool = KeyPool("sat", 100, 1500, 0, clock, passes=SAT, origin=clock.now)
    clock.now += 45  # passes [0,10) and [30,40): 2000 bits made, 1500 kept
    assert pool.available_bits() == 1500


def test_held_pool_with_passes_makes_nothing_and_then_refills_only_in_passes() -> None:
    clock = Clock()
    pool = KeyPool("sat", 100, 10_000, 5000, clock, passes=SAT, origin=clock.now)
    pool.hold_empty("KME_X")
    clock.now += 5
    assert pool.available_bits() == 0
    pool.release("KME_X")  # t = 5: five seconds of this pass left
    clock.now += 25  # t = 30
    assert pool.available_bits() == 500


def test_pass_times_count_from_the_network_origin() -> None:
    doc = yaml.safe_load(
        """
name: t
kmes: [{id: A, saes: [SA]}, {id: B, saes: [SB]}]
links:
  - {id: sat, kind: point_to_point, kmes: [A, B], rate_bps: 10, capacity_bits: 4096,
     initial_fill: 0, passes: {period_s: 100, duration_s: 10, offset_s: 20}}
  - {id: fibre, kind: point_to_point, kmes: [A, B], rate_bps: 10, capacity_bits: 4096,
     initial_fill: 0}
"""
    )
    clock = Clock()
    net = KeyNetwork(parse_topology(doc), clock)
    clock.now += 500  # PKI made, servers bound: the simulator starts now
    net.set_origin(clock.now)
    sat, fibre = net.pools["sat"], net.pools["fibre"]
    assert sat.available_bits() == 0  # no pass before the start counts
    assert fibre.available_bits() == 4096  # 500 s at 10 bit/s, cut to capacity
    clock.now += 25  # t = 25: five seconds into the first pass
    assert sat.available_bits() == 50
    snap = net.snapshot()
    assert snap["sat"]["link_up"] is True and snap["sat"]["next_change_in_s"] == 5
    assert "link_up" not in snap["fibre"]  # unscheduled pools keep their old shape
    clock.now += 10
    assert net.snapshot()["sat"] == {
        "available_bits": 100,
        "capacity_bits": 4096,
        "rate_bps": 10,
        "held_empty": False,
        "link_up": False,
        "next_change_in_s": 85,
    }


def test_relay_through_a_scheduled_hop_starves_when_that_hop_is_empty() -> None:
    doc = yaml.safe_load(
        """
name: t
kmes: [{id: A, saes: [SA]}, {id: B, saes: [SB]}, {id: C, saes: [SC]}]
links:
  - {id: ab, kind: point_to_point, kmes: [A, B], rate_bps: 1000, capacity_bits: 65536}
  - {id: bc, kind: point_to_point, kmes: [B, C], rate_bps: 100, capacity_bits: 4096,
     initial_fill: 0.25, passes: {period_s: 30, duration_s: 10, offset_s: 10}}
  - {id: abc, kind: trusted_relay, path: [A, B, C]}
"""
    )
    clock = Clock()
    net = KeyNetwork(parse_topology(doc), clock)
    ac = net.route("A", "C")
    assert ac is not None and ac.kind == "trusted_relay"
    assert net.take([(ac, 1024)])  # the stored key from an earlier pass
    assert not net.take([(ac, 256)])
    assert net.short_pools([(ac, 256)]) == [net.pools["bc"]]
    clock.now += 9.99  # still before the pass
    assert not net.take([(ac, 256)])
    clock.now += 3  # t = 12.99: the pass has made about 300 bits
    assert net.take([(ac, 256)])
