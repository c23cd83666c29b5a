"""Config models of telemetry: MQTT, Prometheus metrics, the audit trail, logging, alarms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from gateway.config.values import (
    _TOPIC_PATTERN,
    HostPort,
    HostPortField,
    PathField,
    Port,
    _file_validator,
    _Model,
    _private_dir,
    _secret_file,
)


class MqttSettings(_Model):
    host: Annotated[str, Field(min_length=1)]
    port: Port = 1883
    ca_file: PathField | None = None  # TLS when ca_file or cert_file is given
    cert_file: PathField | None = None
    key_file: PathField | None = Field(default=None, validate_default=True)
    username: str | None = None
    password_file: PathField | None = Field(default=None, validate_default=True)
    topic_prefix: Annotated[str, Field(pattern=_TOPIC_PATTERN)] = "qsgw"
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    keepalive_s: int = Field(default=30, ge=1, le=3600)

    _files = _file_validator("ca_file", "cert_file", secret=False)

    @field_validator("key_file")
    @classmethod
    def _key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (value is None) != (info.data.get("cert_file") is None) and "cert_file" in info.data:
            raise ValueError("cert_file and key_file go together: give both or neither")
        return None if value is None else _secret_file(value, info)

    @field_validator("password_file")
    @classmethod
    def _password(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if info.data.get("username") is None:
            raise ValueError("needs username")
        return _secret_file(value, info)


class MetricsSettings(_Model):
    listen: HostPortField = Field(default_factory=lambda: HostPort("127.0.0.1", 9814))


class AuditSettings(_Model):
    path: PathField | None = None  # default: <state_dir>/audit.jsonl
    rotate_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    sign: bool = False

    @field_validator("path")
    @classmethod
    def _audit_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None:
            _private_dir(value.parent, info, "audit directory")
        return value


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"


class AlarmsSettings(_Model):
    handshake_failures: int = Field(default=3, ge=1)


class TelemetrySettings(_Model):
    mqtt: MqttSettings | None = None
    metrics: MetricsSettings | None = None
    audit: AuditSettings | None = None
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    alarms: AlarmsSettings = Field(default_factory=AlarmsSettings)
