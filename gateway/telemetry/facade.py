"""`Telemetry`: the one object the daemon calls; fans out to audit, metrics, MQTT.

Every method is synchronous, non-blocking and cheap: metrics are in-memory,
MQTT goes through a bounded queue, the audit record is handed to the audit
writer thread. A fault in a sink is logged and counted, never raised into
the daemon. Call from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec

from gateway.telemetry.alarms import AlarmBook, AlarmName, AlarmSettings, AlarmTransition
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.checkpoint import make_checkpoint, write_checkpoint
from gateway.telemetry.key_origin import key_origins
from gateway.telemetry.metrics import Metrics, sources_label
from gateway.telemetry.mqtt import MqttPublisher

log = logging.getLogger(__name__)

P = ParamSpec("P")

CHECKPOINT_INTERVAL_S = 60.0
_MAX_TEXT = 500  # free-text fields (reasons, details) are capped in every sink


def _guarded(fn: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # telemetry must never take the daemon down
            self = args[0]
            if isinstance(self, Telemetry):
                self.internal_errors += 1
            log.error("telemetry: %s failed: %s", fn.__name__, type(exc).__name__)

    return wrapper


def _text(s: str | None) -> str | None:
    return None if s is None else s[:_MAX_TEXT]


class Telemetry:
    def __init__(
        self,
        gateway_id: str,
        *,
        audit: AuditLog | None = None,
        metrics: Metrics | None = None,
        mqtt: MqttPublisher | None = None,
        alarm_settings: AlarmSettings | None = None,
        checkpoint_signer: Any = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.audit = audit
        self.metrics = metrics
        self.mqtt = mqtt
        self.alarm_settings = alarm_settings or AlarmSettings()
        self.alarms = AlarmBook()
        self.internal_errors = 0
        self._hs_failures: dict[str, int] = {}
        self._peers: dict[str, str] = {}  # peer -> policy state
        self._control_refused: dict[str, int] = {}  # last totals seen, per fixed reason
        self._checkpoint_signer = checkpoint_signer  # the gateway identity (HybridSigner)
        self._checkpoint_at = 0.0
        self._started_at = time.time()
        self._housekeeping: asyncio.Task[None] | None = None
        if mqtt is not None and metrics is not None and mqtt._on_drop is None:
            mqtt._on_drop = lambda n: metrics.telemetry_dropped.labels("mqtt").inc(n)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start_http()
        if self.mqtt is not None:
            self._publish_gateway_state()
            await self.mqtt.start()
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self._tick(), name="qsgw-telemetry")

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        if self.audit is not None:
            await asyncio.to_thread(self.audit.flush)
            self.audit_checkpoint()  # the last word of this run, signed
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.audit is not None:
            await asyncio.to_thread(self.audit.close)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop_http)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.alarm_settings.identity_refused_hold_s / 4))
            self.expire_alarms()
            if time.monotonic() - self._checkpoint_at >= CHECKPOINT_INTERVAL_S:
                self.audit_checkpoint()

    @_guarded
    def audit_checkpoint(self) -> None:
        """Sign the audit chain's length and head; write it beside the trail, publish it."""
        if self.audit is None or self._checkpoint_signer is None:
            return
        self._checkpoint_at = time.monotonic()
        with self.audit._lock:  # the writer thread's view: what is on disk
            records, head = self.audit.next_seq, self.audit.last_hash
        doc = make_checkpoint(self.gateway_id, records, head, self._checkpoint_signer)
        write_checkpoint(self.audit.path, doc)
        if self.metrics is not None:
            self.metrics.audit_checkpoint_seq.set(records)
        if self.mqtt is not None:
            self.mqtt.set_retained(self.mqtt.topic("audit", "checkpoint"), doc)

    @_guarded
    def expire_alarms(self, now: float | None = None) -> None:
        """Clear identity-refused alarms not renewed within the hold time."""
        for t in self.alarms.expire(
            AlarmName.IDENTITY_REFUSED,
            self.alarm_settings.identity_refused_hold_s,
            time.time() if now is None else now,
        ):
            self._alarm_transition(t)

    # -- fan-out helpers --------------------------------------------------------

    def _event(self, event: str, **fields: Any) -> None:
        if self.mqtt is not None:
            self.mqtt.publish_event(
                {"event": event, "gateway": self.gateway_id, "time": time.time(), **fields}
            )

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.submit({"type": kind, "gateway": self.gateway_id, **fields})

    def _publish_gateway_state(self) -> None:
        if self.mqtt is None:
            return
        by_state: dict[str, int] = {}
        for s in self._peers.values():
            by_state[s] = by_state.get(s, 0) + 1
        self.mqtt.set_retained(
            self.mqtt.topic("state"),
            {
                "gateway": self.gateway_id,
                "started_at": self._started_at,
                "peers": len(self._peers),
                "peers_by_state": by_state,
                "alarms_active": len(self.alarms.active()),
                "time": time.time(),
            },
        )

    def _alarm_transition(self, t: AlarmTransition) -> None:
        a = t.alarm
        total = len(self.alarms.active())
        if self.metrics is not None:
            self.metrics.set_alarm(a.name.value, a.subject, t.active, total)
        payload = {
            "alarm": a.name.value,
            "subject": a.subject,
            "active": t.active,
            "severity": a.severity,
            "since": a.since,
            "detail": _text(a.detail),
        }
        if self.mqtt is not None:
            self.mqtt.set_retained(
                self.mqtt.topic("alarms", a.name.value, a.subject),
                {"gateway": self.gateway_id, "time": time.time(), **payload},
            )
            self._event("alarm_raised" if t.active else "alarm_cleared", **payload)
            self._publish_gateway_state()
        self._audit(
            "alarm",
            action="raised" if t.active else "cleared",
            alarm=a.name.value,
            subject=a.subject,
            severity=a.severity,
            detail=_text(a.detail),
        )
        (log.warning if t.active else log.info)(
            "alarm %s %s: %s", a.name.value, "raised" if t.active else "cleared", a.subject
        )

    def _set_alarm(self, name: AlarmName, subject: str, active: bool, detail: str) -> None:
        t = (
            self.alarms.raise_(name, subject, detail)
            if active
            else self.alarms.clear(name, subject, detail)
        )
        if t is not None:
            self._alarm_transition(t)

    # -- the daemon's calls -------------------------------------------------------

    @_guarded
    def alarm(self, name: str, subject: str, active: bool, detail: str = "") -> None:
        """Raise or clear any alarm by name (idempotent)."""
        self._set_alarm(AlarmName(name), subject, active, detail)

    @_guarded
    def epoch_made(
        self,
        peer_id: str,
        epoch: int,
        suite: str,
        sources: Sequence[str],
        qkd_key_ids: Sequence[str],
        duration_s: float,
        degraded: bool,
        qkd_key_extensions: Mapping[str, object] | None = None,
    ) -> None:
        """`qkd_key_extensions`: key_ID -> the KME's key_ID_extension (metadata, never
        key material); both the event and the audit record name each key's origin
        in `qkd_keys` (see key_origin.py)."""
        src = sorted(sources)
        origins = key_origins(list(qkd_key_ids), qkd_key_extensions)
        if self.metrics is not None:
            self.metrics.epochs.labels(peer_id, "made", sources_label(src)).inc()
            self.metrics.epoch_duration.observe(duration_s)
            self.metrics.peer_epoch.labels(peer_id).set(epoch)
            self.metrics.set_key_age(peer_id, 0.0)
        self._event(
            "epoch_made",
            peer=peer_id,
            epoch=epoch,
            suite=suite,
            sources=src,
            qkd_key_ids=list(qkd_key_ids),
            qkd_keys=origins,
            duration_s=duration_s,
            degraded=degraded,
        )
        self._audit(
            "epoch",
            outcome="made",
            peer=peer_id,
            epoch=epoch,
            suite=suite,
            sources=src,
            qkd_key_ids=list(qkd_key_ids),
            qkd_keys=origins,
            degraded=degraded,
            duration_s=round(duration_s, 6),
        )
        # A made epoch proves the peer's handshakes and identity work again.
        self._hs_failures.pop(peer_id, None)
        self._set_alarm(AlarmName.HANDSHAKE_FAILURES, peer_id, False, "epoch made")
        self._set_alarm(AlarmName.IDENTITY_REFUSED, peer_id, False, "epoch made")

    @_guarded
    def epoch_failed(self, peer_id: str, epoch: int, reason: str, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.epochs.labels(peer_id, "failed", "none").inc()
            self.metrics.epoch_failures.labels(peer_id, reason).inc()
        self._event("epoch_failed", peer=peer_id, epoch=epoch, reason=reason, detail=_text(detail))
        self._audit(
            "epoch",
            outcome="failed",
            peer=peer_id,
            epoch=epoch,
            reason=reason,
            detail=_text(detail),
        )

    @_guarded
    def peer_state(
        self,
        peer_id: str,
        *,
        epoch: int,
        key_age_s: float,
        sources: Sequence[str],
        policy_state: str,
        last_error: str | None,
    ) -> None:
        changed = self._peers.get(peer_id) != policy_state
        self._peers[peer_id] = policy_state
        if self.metrics is not None:
            self.metrics.peer_epoch.labels(peer_id).set(epoch)
            self.metrics.set_key_age(peer_id, key_age_s)
            self.metrics.set_policy_state(peer_id, policy_state)
        if self.mqtt is not None:
            now = time.time()
            self.mqtt.set_retained(
                self.mqtt.topic("peers", peer_id, "state"),
                {
                    "gateway": self.gateway_id,
                    "peer": peer_id,
                    "epoch": epoch,
                    "key_age_s": round(key_age_s, 3),
                    "key_installed_at": round(now - key_age_s, 3),
                    "sources": sorted(sources),
                    "policy_state": policy_state,
                    "last_error": _text(last_error),
                    "time": now,
                },
            )
            if changed:
                self._publish_gateway_state()

    @_guarded
    def kme_call(
        self, kme_id: str, operation: str, duration_s: float, error_kind: str | None
    ) -> None:
        if self.metrics is not None:
            self.metrics.kme_latency.labels(kme_id, operation).observe(duration_s)
            if error_kind is not None:
                self.metrics.kme_errors.labels(kme_id, operation, error_kind).inc()

    @_guarded
    def loop_lag(self, lag_s: float) -> None:
        if self.metrics is not None:
            self.metrics.loop_lag.observe(lag_s)

    @_guarded
    def qkd_keys_fetched(self, peer_id: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.qkd_keys.labels(peer_id).inc(count)

    @_guarded
    def pool_level(self, kme_id: str, slave_sae_id: str, stored: int, maximum: int) -> None:
        if self.metrics is not None:
            self.metrics.pool_stored.labels(kme_id, slave_sae_id).set(stored)
            self.metrics.pool_max.labels(kme_id, slave_sae_id).set(maximum)
        low = stored < self.alarm_settings.pool_low_threshold
        self._set_alarm(
            AlarmName.KEY_POOL_LOW,
            f"{kme_id}:{slave_sae_id}",
            low,
            f"{stored} of {maximum} keys stored (threshold "
            f"{self.alarm_settings.pool_low_threshold})",
        )

    @_guarded
    def handshake_failed(self, peer_id: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.handshake_failures.labels(peer_id, reason).inc()
        n = self._hs_failures.get(peer_id, 0) + 1
        self._hs_failures[peer_id] = n
        self._event("handshake_failed", peer=peer_id, reason=reason, consecutive=n)
        if n >= self.alarm_settings.handshake_failure_threshold:
            self._set_alarm(
                AlarmName.HANDSHAKE_FAILURES,
                peer_id,
                True,
                f"{n} consecutive handshake failures, last: {reason}",
            )

    @_guarded
    def identity_refused(self, peer_id: str | None, source: str) -> None:
        if self.metrics is not None:
            self.metrics.identity_refused.labels(peer_id or "unknown").inc()
        self._event("identity_refused", peer=peer_id, source=source)
        subject = peer_id if peer_id is not None else f"unknown@{source}"
        self._set_alarm(
            AlarmName.IDENTITY_REFUSED, subject, True, f"identity refused from {source}"
        )

    @_guarded
    def control_stats(self, refused: Mapping[str, int], open_connections: int) -> None:
        """Refusal totals (fixed reasons) and open connections: metrics only, never one
        event per refusal (a flood shows as the control_flood alarm)."""
        if self.metrics is None:
            return
        for reason, total in refused.items():
            delta = total - self._control_refused.get(reason, 0)
            if delta > 0:
                self.metrics.control_refused.labels(reason).inc(delta)
            self._control_refused[reason] = total
        self.metrics.control_connections.set(open_connections)

    @_guarded
    def kme_reachable(self, kme_id: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.kme_up.labels(kme_id).set(1.0 if ok else 0.0)
        self._set_alarm(
            AlarmName.KME_UNREACHABLE,
            kme_id,
            not ok,
            "KME answers again" if ok else "KME does not answer",
        )

    @_guarded
    def tunnel_health(self, peer_id: str, live: bool, rx_bytes: int | None,
                      tx_bytes: int | None) -> None:
        """The data plane's view, each liveness poll: metrics only (the state change
        and the tunnel_down alarm carry the events)."""
        if self.metrics is not None:
            self.metrics.tunnel_live.labels(peer_id).set(1.0 if live else 0.0)
            for direction, value in (("rx", rx_bytes), ("tx", tx_bytes)):
                if value is not None:
                    self.metrics.tunnel_bytes.labels(peer_id, direction).set(value)

    @_guarded
    def policy_changed(self, peer_id: str, old: str, new: str) -> None:
        if self.metrics is not None:
            self.metrics.set_policy_state(peer_id, new)
        self._peers[peer_id] = new
        self._event("policy_changed", peer=peer_id, old=old, new=new)
        self._audit("policy", peer=peer_id, old=old, new=new)
        if new == "degraded":
            self._set_alarm(
                AlarmName.QKD_DEGRADED,
                peer_id,
                True,
                "QKD keys missing: running on PQC + X25519 (policy preferred)",
            )
            self._set_alarm(AlarmName.TUNNEL_BLOCKED, peer_id, False, "tunnel carries traffic")
        elif new == "blocked":
            self._set_alarm(
                AlarmName.TUNNEL_BLOCKED,
                peer_id,
                True,
                "no fresh key under policy required: tunnel blocked",
            )
            self._set_alarm(AlarmName.QKD_DEGRADED, peer_id, False, "superseded by blocked")
        elif new == "ok":
            self._set_alarm(AlarmName.QKD_DEGRADED, peer_id, False, "QKD keys in use again")
            self._set_alarm(AlarmName.TUNNEL_BLOCKED, peer_id, False, "fresh key installed")
        self._publish_gateway_state()

    @_guarded
    def ha_role(self, member: str, active: bool, reason: str) -> None:
        """This member became active (a takeover, in the audit trail) or standby."""
        role = "active" if active else "standby"
        if self.metrics is not None:
            self.metrics.ha_active.labels(member).set(1 if active else 0)
            if active:
                self.metrics.ha_takeovers.labels(member).inc()
        self._event("ha_role", member=member, role=role, reason=_text(reason))
        self._audit("ha_takeover" if active else "ha_standby", member=member,
                    reason=_text(reason))
        if self.mqtt is not None:
            self.mqtt.set_retained(self.mqtt.topic("ha"), {
                "gateway": self.gateway_id, "member": member, "role": role,
                "time": time.time()})

    @_guarded
    def journal_health(self, backend: str, problem: str | None) -> None:
        """The journal answers (problem None) or not: the journal_unavailable alarm."""
        if self.metrics is not None:
            self.metrics.journal_up.labels(backend).set(0 if problem else 1)
        self._set_alarm(AlarmName.JOURNAL_UNAVAILABLE, self.gateway_id, problem is not None,
                        problem or f"{backend} journal answers again")
