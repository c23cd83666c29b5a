"""Operations: MQTT telemetry, Prometheus metrics, alarms, the audit trail, structured logs.

The daemon holds one `Telemetry` (facade.py); each sink is optional.
"""

from gateway.telemetry.alarms import Alarm, AlarmName, AlarmSettings
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.audit_records import AuditError
from gateway.telemetry.audit_sign import AuditSigner, AuditVerifier, HybridSigner, HybridVerifier
from gateway.telemetry.audit_verify import ChainBreak, VerifyResult, verify_files
from gateway.telemetry.facade import Telemetry
from gateway.telemetry.logs import bind, configure_logging, peer_logger
from gateway.telemetry.metrics import Metrics, MetricsSettings
from gateway.telemetry.mqtt import MqttPublisher, MqttSettings, MqttSettingsError
from gateway.telemetry.setup import build_telemetry

__all__ = [
    "Alarm",
    "AlarmName",
    "AlarmSettings",
    "AuditError",
    "AuditLog",
    "AuditSigner",
    "AuditVerifier",
    "ChainBreak",
    "HybridSigner",
    "HybridVerifier",
    "Metrics",
    "MetricsSettings",
    "MqttPublisher",
    "MqttSettings",
    "MqttSettingsError",
    "Telemetry",
    "VerifyResult",
    "bind",
    "build_telemetry",
    "configure_logging",
    "peer_logger",
    "verify_files",
]
