"""Build the daemon's `Telemetry` from a validated `GatewayConfig`.

MQTT and metrics are off unless configured; the audit trail is always written."""

from __future__ import annotations

from typing import Any

from gateway.telemetry.alarms import AlarmSettings
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.audit_sign import HybridSigner
from gateway.telemetry.facade import Telemetry
from gateway.telemetry.metrics import Metrics, MetricsSettings
from gateway.telemetry.mqtt import MqttPublisher, MqttSettings


def build_telemetry(config: Any, identity: Any | None = None) -> Telemetry:
    """`config` is a `gateway.config.GatewayConfig`; `identity` the gateway's
    `LocalIdentity`, needed only when `telemetry.audit.sign` is true."""
    gw_id: str = config.gateway.id
    tel = config.telemetry
    # The audit trail is always on: auditors need every epoch whether or not
    # the section is written; `telemetry.audit` only moves, rotates or signs it.
    audit_cfg = tel.audit
    path = (audit_cfg.path if audit_cfg is not None and audit_cfg.path
            else config.gateway.state_dir / "audit.jsonl")
    signer = None
    if audit_cfg is not None and audit_cfg.sign:
        if identity is None:
            raise ValueError("telemetry.audit.sign needs the gateway identity")
        signer = HybridSigner.from_identity(identity)
    audit = AuditLog(path, max_bytes=audit_cfg.rotate_bytes if audit_cfg is not None
                     else 10 * 1024 * 1024, signer=signer)
    metrics: Metrics | None = None
    if tel.metrics is not None:
        metrics = Metrics(MetricsSettings(tel.metrics.listen.host, tel.metrics.listen.port))
    mqtt: MqttPublisher | None = None
    if tel.mqtt is not None:
        m = tel.mqtt
        mqtt = MqttPublisher(
            MqttSettings(
                host=m.host,
                port=m.port,
                ca_file=m.ca_file,
                cert_file=m.cert_file,
                key_file=m.key_file,
                username=m.username,
                password_file=m.password_file,
                topic_prefix=m.topic_prefix,
                queue_size=m.queue_size,
                keepalive=m.keepalive_s,
            ),
            gw_id,
        )
    alarms = AlarmSettings(
        pool_low_threshold=config.kme.pool_low_threshold,
        handshake_failure_threshold=tel.alarms.handshake_failures,
    )
    # Checkpoints are signed whenever the identity is at hand (the daemon always has it).
    checkpoint_signer = HybridSigner.from_identity(identity) if identity is not None else None
    return Telemetry(gw_id, audit=audit, metrics=metrics, mqtt=mqtt, alarm_settings=alarms,
                     checkpoint_signer=checkpoint_signer)
