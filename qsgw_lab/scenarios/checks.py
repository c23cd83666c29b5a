"""Scenario-wide checks over what the gateways journalled (pure).

A QKD key is used once, ever: across a whole scenario a key_ID may be journalled
by at most the two gateways of one tunnel (master and slave of the same key),
for the same epoch, and each must have been delivered by the KMEs to exactly
those SAEs, at most once each.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple


class ConsumedKey(NamedTuple):
    gateway: str  # the gateway whose journal holds it
    key_id: str
    peer: str  # the gateway it was used with
    epoch: int | None


def key_reuse_problems(journals: Mapping[str, Sequence[ConsumedKey]],
                       delivered: Mapping[str, Sequence[str]]) -> list[str]:
    """Problems, one line each; empty when no key was used twice.

    journals: gateway -> its journal rows; delivered: SAE -> key_IDs the KMEs gave it.
    """
    problems: list[str] = []
    by_key: dict[str, list[ConsumedKey]] = defaultdict(list)
    for rows in journals.values():
        for row in rows:
            by_key[row.key_id].append(row)
    for key_id, rows in by_key.items():
        if len(rows) > 2:
            users = ", ".join(sorted(f"{r.gateway}->{r.peer}" for r in rows))
            problems.append(f"key {key_id} journalled {len(rows)} times ({users})")
        elif len(rows) == 2:
            a, b = rows
            if (a.gateway, a.peer) != (b.peer, b.gateway):
                problems.append(f"key {key_id} used on two tunnels: {a.gateway}->{a.peer} "
                                f"and {b.gateway}->{b.peer}")
            elif a.epoch != b.epoch:
                problems.append(f"key {key_id} used in epochs {a.epoch} and {b.epoch} "
                                f"of {a.gateway}<->{b.gateway}")
    for sae, ids in delivered.items():
        for key_id, n in Counter(ids).items():
            if n > 1:
                problems.append(f"key {key_id} delivered {n} times to {sae}")
    every_delivered = {k for ids in delivered.values() for k in ids}
    for key_id in by_key:
        if key_id not in every_delivered:
            problems.append(f"key {key_id} journalled but never delivered by a KME")
    return problems
