"""Prometheus metrics in the gateway's own registry, served over HTTP.

Updates are in-memory counter bumps (cheap, thread-safe); the HTTP server
runs in prometheus-client's own thread, so a scrape never touches the loop.

A scrape's cost grows with its series, and a hub has thousands of peers: each
peer has a few series and no more (the epoch-duration histogram is the gateway's,
not the peer's; the policy state is one series, its label the current state; no
`_created` series), so that a 15 s scrape interval does not cost the gateway
its handshakes (see docs/benchmarks.md, scale).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9108  # 0: any free port (tests)


def sources_label(sources: Sequence[str]) -> str:
    return "+".join(sorted(sources)) or "none"


class Metrics:
    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        disable_created_metrics()  # type: ignore[no-untyped-call]  # a `_created` per child
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.epochs = Counter(
            "qsgw_epochs",
            "Epoch keys made or failed, by peer, outcome and key sources",
            ["peer", "outcome", "sources"],
            registry=r,
        )
        self.epoch_failures = Counter(
            "qsgw_epoch_failures",
            "Failed epochs by peer and reason",
            ["peer", "reason"],
            registry=r,
        )
        self.epoch_duration = Histogram(
            "qsgw_epoch_duration_seconds",
            "Time to make an epoch key (all peers)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.peer_epoch = Gauge("qsgw_peer_epoch", "Current epoch per peer", ["peer"], registry=r)
        self.key_age = Gauge(
            "qsgw_peer_key_age_seconds",
            "Age of the key installed for each peer",
            ["peer"],
            registry=r,
        )
        self.qkd_keys = Counter(
            "qsgw_qkd_keys_fetched", "QKD keys fetched from the KME, by peer", ["peer"], registry=r
        )
        self.kme_latency = Histogram(
            "qsgw_kme_call_duration_seconds",
            "KME call latency",
            ["kme", "operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kme_errors = Counter(
            "qsgw_kme_call_errors",
            "KME call errors by kind",
            ["kme", "operation", "kind"],
            registry=r,
        )
        self.kme_up = Gauge("qsgw_kme_up", "1 when the KME answers", ["kme"], registry=r)
        self.pool_stored = Gauge(
            "qsgw_kme_pool_stored_keys",
            "stored_key_count from the KME status call",
            ["kme", "slave_sae"],
            registry=r,
        )
        self.pool_max = Gauge(
            "qsgw_kme_pool_max_keys",
            "max_key_count from the KME status call",
            ["kme", "slave_sae"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "qsgw_handshake_failures",
            "Handshake failures by peer and reason",
            ["peer", "reason"],
            registry=r,
        )
        self.identity_refused = Counter(
            "qsgw_identity_refused",
            "Handshakes refused for an unknown or wrong identity",
            ["peer"],
            registry=r,
        )
        self.policy_state = Gauge(
            "qsgw_peer_policy_state",
            "1, with the peer's current policy state as the state label",
            ["peer", "state"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "qsgw_telemetry_dropped",
            "Telemetry messages dropped (queue full)",
            ["sink"],
            registry=r,
        )
        self.tunnel_live = Gauge(
            "qsgw_tunnel_live", "1 while the data plane shows the tunnel carrying traffic",
            ["peer"], registry=r,
        )
        self.tunnel_bytes = Gauge(
            "qsgw_tunnel_bytes", "Bytes through the tunnel, as the data plane counts them",
            ["peer", "direction"], registry=r,
        )
        self.alarm_active = Gauge(
            "qsgw_alarm_active", "1 while the alarm is raised", ["alarm", "subject"], registry=r
        )
        self.alarms_active = Gauge("qsgw_alarms_active", "Number of active alarms", registry=r)
        self.control_refused = Counter(
            "qsgw_control_refused",
            "Control connections refused, by fixed reason",
            ["reason"],
            registry=r,
        )
        self.control_connections = Gauge(
            "qsgw_control_connections", "Open control connections", registry=r
        )
        # The HA pair (gateway.daemon.ha) and the journal backend's health.
        self.ha_active = Gauge("qsgw_ha_active", "1 while this member is the active one "
                               "(0: standby)", ["member"], registry=r)
        self.ha_takeovers = Counter("qsgw_ha_takeovers", "Times this member became active",
                                    ["member"], registry=r)
        self.journal_up = Gauge("qsgw_journal_up", "1 while the journal can be written",
                                ["backend"], registry=r)
        self.audit_checkpoint_seq = Gauge(
            "qsgw_audit_checkpoint_records",
            "Records covered by the newest signed audit checkpoint",
            registry=r,
        )
        self.loop_lag = Histogram(
            "qsgw_event_loop_lag_seconds",
            "How late the daemon's 0.25 s probe timer fired (daemon.looplag): overload",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self._installed_at: dict[str, float] = {}
        self._policy: dict[str, str] = {}  # peer -> the state its one series shows
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- updates --------------------------------------------------------

    def set_key_age(self, peer: str, key_age_s: float) -> None:
        # Store when the key was installed; the gauge computes its age at scrape time.
        installed = time.monotonic() - key_age_s
        with self._lock:
            first = peer not in self._installed_at
            self._installed_at[peer] = installed
        if first:
            self.key_age.labels(peer).set_function(lambda: self._age(peer))

    def _age(self, peer: str) -> float:
        with self._lock:
            t = self._installed_at.get(peer)
        return 0.0 if t is None else max(0.0, time.monotonic() - t)

    def set_policy_state(self, peer: str, state: str) -> None:
        with self._lock:
            old = self._policy.get(peer)
            if old == state:
                return
            self._policy[peer] = state
        if old is not None:
            with contextlib.suppress(KeyError):
                self.policy_state.remove(peer, old)
        self.policy_state.labels(peer, state).set(1.0)

    def set_alarm(self, alarm: str, subject: str, active: bool, total_active: int) -> None:
        self.alarm_active.labels(alarm, subject).set(1.0 if active else 0.0)
        self.alarms_active.set(total_active)

    # -- HTTP -------------------------------------------------------------

    def start_http(self) -> int:
        """Serve /metrics; returns the bound port."""
        if self._server is None:
            self._server, self._thread = start_http_server(
                self.settings.port, addr=self.settings.host, registry=self.registry
            )
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def stop_http(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None
