"""Fault injection for one KME: latency, a share of 503s, outages, empty pools, late keys.

Outages answer every call with 503 and an error body (the listener stays up, so a
client sees a KME that is reachable but cannot serve, the commoner field failure;
a client's connection-refused path is tested by pointing it at a closed port).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

FAULT_FIELDS = ("latency_s", "error_rate", "outage", "outage_windows", "empty_pools", "key_delay_s")


class FaultError(ValueError):
    """A fault description is invalid; the message names the field."""


@dataclass(frozen=True)
class Fault:
    """What is wrong with one KME. The default is a healthy KME.

    latency_s:      added before every answer.
    error_rate:     share (0..1) of calls answered 503.
    outage:         every call answered 503 while set.
    outage_windows: (start, end) seconds after the simulator started; 503 inside them.
    empty_pools:    every pool at this KME drained when set and held empty while set.
    key_delay_s:    keys reach this KME (as slave) this long after enc_keys; until then
                    dec_keys answers 400 "one or more keys specified are not found on KME".
    """

    latency_s: float = 0.0
    error_rate: float = 0.0
    outage: bool = False
    outage_windows: tuple[tuple[float, float], ...] = ()
    empty_pools: bool = False
    key_delay_s: float = 0.0

    def in_outage(self, since_start: float) -> bool:
        if self.outage:
            return True
        return any(a <= since_start < b for a, b in self.outage_windows)

    def is_healthy(self) -> bool:
        return self == Fault()

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["outage_windows"] = [list(w) for w in self.outage_windows]
        return out


def _num(value: object, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(f"{name}: must be a number")
    if not lo <= value <= hi:
        raise FaultError(f"{name}: must be between {lo:g} and {hi:g}")
    return float(value)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise FaultError(f"{name}: must be true or false")
    return value


def parse_fault(data: object, base: Fault | None = None) -> Fault:
    """A Fault from a JSON/YAML mapping; fields not named keep their value in `base`."""
    if not isinstance(data, Mapping):
        raise FaultError("a fault must be a mapping of " + ", ".join(FAULT_FIELDS))
    for key in data:
        if key not in FAULT_FIELDS:
            raise FaultError(f"{key}: unknown fault; allowed: {', '.join(FAULT_FIELDS)}")
    cur = base or Fault()
    windows = cur.outage_windows
    if "outage_windows" in data:
        raw = data["outage_windows"]
        if not isinstance(raw, list | tuple):
            raise FaultError("outage_windows: must be a list of [start, end] seconds")
        parsed: list[tuple[float, float]] = []
        for i, w in enumerate(raw):
            if not isinstance(w, list | tuple) or len(w) != 2:
                raise FaultError(f"outage_windows[{i}]: must be [start, end] seconds")
            a = _num(w[0], f"outage_windows[{i}][0]", 0, 1e9)
            b = _num(w[1], f"outage_windows[{i}][1]", 0, 1e9)
            if b <= a:
                raise FaultError(f"outage_windows[{i}]: end must be after start")
            parsed.append((a, b))
        windows = tuple(parsed)
    return Fault(
        latency_s=_num(data.get("latency_s", cur.latency_s), "latency_s", 0, 600),
        error_rate=_num(data.get("error_rate", cur.error_rate), "error_rate", 0, 1),
        outage=_flag(data.get("outage", cur.outage), "outage"),
        outage_windows=windows,
        empty_pools=_flag(data.get("empty_pools", cur.empty_pools), "empty_pools"),
        key_delay_s=_num(data.get("key_delay_s", cur.key_delay_s), "key_delay_s", 0, 86_400),
    )
