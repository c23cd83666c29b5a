"""A boot's queue of outgoing handshakes: InitiationSlots says when it drained, and a
session keyed early in it holds its first rekey until then, bounded so that the key
still has an interval of its lifetime left (keypolicy.first_rekey_hold)."""

from __future__ import annotations

import asyncio

from gateway.daemon.keypolicy import first_rekey_hold
from gateway.daemon.slots import InitiationSlots


async def test_drained_waits_for_the_last_queued_handshake_to_get_a_slot() -> None:
    slots = InitiationSlots(2)
    release = asyncio.Event()
    got_slot: list[int] = []

    async def handshake(i: int) -> None:
        async with slots:
            got_slot.append(i)
            await release.wait()

    tasks = [asyncio.create_task(handshake(i)) for i in range(6)]
    await asyncio.sleep(0)
    assert got_slot == [0, 1] and slots.waiting == 4
    drained = asyncio.create_task(slots.drained(60))
    for _ in range(3):  # the slots turn over; the queue is not empty yet
        release.set()
        await asyncio.sleep(0)
        release.clear()
        await asyncio.sleep(0)
        assert not drained.done()
    release.set()
    await asyncio.wait_for(drained, 5)  # the last of the queue has its slot
    assert slots.waiting == 0 and sorted(got_slot) == list(range(6))
    await asyncio.gather(*tasks)


async def test_drained_gives_up_at_its_bound_and_returns_at_once_when_idle() -> None:
    slots = InitiationSlots(1)
    await asyncio.wait_for(slots.drained(60), 1)  # nothing queued: no wait
    hold = asyncio.Event()

    async def holder() -> None:
        async with slots:
            await hold.wait()

    tasks = [asyncio.create_task(holder()) for _ in range(2)]
    await asyncio.sleep(0)
    assert slots.waiting == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await slots.drained(0.2)  # the queue is stuck: the bound ends the wait
    assert loop.time() - started >= 0.2 and slots.waiting == 1
    hold.set()
    await asyncio.gather(*tasks)


def test_the_hold_leaves_an_interval_of_the_key_lifetime_for_retries() -> None:
    assert first_rekey_hold(120, 300) == 60  # the defaults
    assert first_rekey_hold(120, 1000) == 120  # never more than an interval
    assert first_rekey_hold(120, 200) == 0  # no room: drawn at once, as before
    for interval, lifetime in [(30, 75), (120, 300), (300, 3600), (60, 61)]:
        latest_first_rekey = first_rekey_hold(interval, lifetime) + interval
        assert lifetime - latest_first_rekey >= min(interval, lifetime - interval)
