"""Builds the daemon's `Telemetry` from the config: each sink only when configured."""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig
from gateway.identity import LocalIdentity
from gateway.telemetry import (
    AlarmSettings,
    AuditLog,
    HybridSigner,
    Metrics,
    MetricsSettings,
    MqttPublisher,
    MqttSettings,
    Telemetry,
)


def build_telemetry(cfg: GatewayConfig, identity: LocalIdentity | None = None) -> Telemetry:
    t = cfg.telemetry
    gateway_id = cfg.gateway.id
    audit_settings = t.audit
    audit_path = (Path(audit_settings.path) if audit_settings and audit_settings.path
                  else Path(cfg.gateway.state_dir) / "audit.jsonl")
    signer = None
    if audit_settings is not None and audit_settings.sign:
        ident_dir = Path(cfg.gateway.identity_dir)
        signer = HybridSigner.from_files(ident_dir / "ed25519.key", ident_dir / "mldsa65.key")
    # The audit trail is always on: auditors need every epoch, configured or not.
    audit = AuditLog(audit_path,
                     max_bytes=audit_settings.rotate_bytes if audit_settings else 10 * 1024 * 1024,
                     signer=signer)
    metrics = None
    if t.metrics is not None:
        metrics = Metrics(MetricsSettings(host=t.metrics.listen.host, port=t.metrics.listen.port))
    mqtt = None
    if t.mqtt is not None:
        m = t.mqtt
        mqtt = MqttPublisher(MqttSettings(
            host=m.host, port=m.port,
            ca_file=Path(m.ca_file) if m.ca_file else None,
            cert_file=Path(m.cert_file) if m.cert_file else None,
            key_file=Path(m.key_file) if m.key_file else None,
            username=m.username,
            password_file=Path(m.password_file) if m.password_file else None,
            topic_prefix=m.topic_prefix, queue_size=m.queue_size), gateway_id)
    alarms = AlarmSettings(pool_low_threshold=cfg.kme.pool_low_threshold,
                           handshake_failure_threshold=t.alarms.handshake_failures)
    return Telemetry(gateway_id, audit=audit, metrics=metrics, mqtt=mqtt, alarm_settings=alarms)
