"""Alarm state: which alarms are active, raised and cleared idempotently.

Pure bookkeeping, no I/O: the facade turns each transition this returns into
an event, a metric, an MQTT retained message and an audit record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class AlarmName(StrEnum):
    KME_UNREACHABLE = "kme_unreachable"
    KEY_POOL_LOW = "key_pool_low"
    QKD_DEGRADED = "qkd_degraded"
    TUNNEL_BLOCKED = "tunnel_blocked"
    TUNNEL_DOWN = "tunnel_down"
    HANDSHAKE_FAILURES = "handshake_failures"
    IDENTITY_REFUSED = "identity_refused"
    CONTROL_FLOOD = "control_flood"
    JOURNAL_LOST = "journal_lost"
    JOURNAL_UNAVAILABLE = "journal_unavailable"
    SPLIT_BRAIN = "split_brain"


SEVERITY: dict[AlarmName, str] = {
    AlarmName.KME_UNREACHABLE: "major",
    AlarmName.KEY_POOL_LOW: "warning",
    AlarmName.QKD_DEGRADED: "major",
    AlarmName.TUNNEL_BLOCKED: "critical",
    AlarmName.TUNNEL_DOWN: "critical",
    AlarmName.HANDSHAKE_FAILURES: "major",
    AlarmName.IDENTITY_REFUSED: "major",
    AlarmName.CONTROL_FLOOD: "major",
    AlarmName.JOURNAL_LOST: "critical",
    AlarmName.JOURNAL_UNAVAILABLE: "critical",
    AlarmName.SPLIT_BRAIN: "critical",
}


@dataclass(frozen=True)
class AlarmSettings:
    """Thresholds; all have safe defaults so the facade works unconfigured.

    pool_low_threshold: the pool-low alarm is raised when a KME's
    stored_key_count for a slave SAE is below this, cleared at or above it.
    handshake_failure_threshold: consecutive handshake failures with a peer
    before the alarm is raised; a made epoch clears it.
    identity_refused_hold_s: how long an identity-refused alarm stays active
    without a new refusal (a made epoch with that peer clears it earlier).
    """

    pool_low_threshold: int = 10
    handshake_failure_threshold: int = 3
    identity_refused_hold_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.pool_low_threshold < 0:
            raise ValueError("pool_low_threshold must be >= 0")
        if self.handshake_failure_threshold < 1:
            raise ValueError("handshake_failure_threshold must be >= 1")
        if self.identity_refused_hold_s <= 0:
            raise ValueError("identity_refused_hold_s must be > 0")


@dataclass(frozen=True)
class Alarm:
    """One alarm instance: a name and the thing it is about (peer, KME, ...)."""

    name: AlarmName
    subject: str
    detail: str
    since: float  # wall-clock seconds when it was raised
    severity: str = field(default="major")


@dataclass(frozen=True)
class AlarmTransition:
    alarm: Alarm
    active: bool  # True: raised now; False: cleared now


class AlarmBook:
    """Active alarms keyed by (name, subject); raise/clear report only changes."""

    def __init__(self) -> None:
        self._active: dict[tuple[AlarmName, str], Alarm] = {}
        self._last_seen: dict[tuple[AlarmName, str], float] = {}

    def raise_(
        self, name: AlarmName, subject: str, detail: str, now: float | None = None
    ) -> AlarmTransition | None:
        ts = time.time() if now is None else now
        key = (name, subject)
        self._last_seen[key] = ts
        if key in self._active:
            return None
        alarm = Alarm(name, subject, detail, ts, SEVERITY[name])
        self._active[key] = alarm
        return AlarmTransition(alarm, True)

    def clear(self, name: AlarmName, subject: str, detail: str = "") -> AlarmTransition | None:
        key = (name, subject)
        alarm = self._active.pop(key, None)
        self._last_seen.pop(key, None)
        if alarm is None:
            return None
        cleared = Alarm(name, subject, detail or alarm.detail, alarm.since, alarm.severity)
        return AlarmTransition(cleared, False)

    def expire(self, name: AlarmName, hold_s: float, now: float) -> list[AlarmTransition]:
        """Clear alarms of `name` not raised again within `hold_s`."""
        out: list[AlarmTransition] = []
        for (n, subject), seen in list(self._last_seen.items()):
            if n is name and now - seen >= hold_s:
                t = self.clear(n, subject, "no refusal within the hold time")
                if t is not None:
                    out.append(t)
        return out

    def is_active(self, name: AlarmName, subject: str) -> bool:
        return (name, subject) in self._active

    def active(self) -> list[Alarm]:
        return sorted(self._active.values(), key=lambda a: (a.name, a.subject))
