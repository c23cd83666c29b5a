"""The gateway config: one YAML file -> frozen, typed settings.

`load_config(path)` parses the file, validates it with strict pydantic models
and a second pass of cross-field checks, and raises `ConfigError` carrying every
problem found, each with the file, line, column and dotted field path, worded to
say what is allowed. Key material is never echoed: secrets live in 0600 files
and only their paths appear in the config.

A package: values.py (types and parsers), models_*.py (one module per section
group), yamlloc.py (YAML with locations, public: the scenario files use it too),
errors.py (ConfigIssue, ConfigError and the pydantic error mapping), checks.py
(cross-section checks), loader.py (parse_config, load_config), diff.py (reload).
"""

from gateway.config.diff import PeerDiff, changed_sections, diff_peers
from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.loader import load_config, parse_config
from gateway.config.models_gateway import ControlSettings, GatewayConfig, GatewaySettings
from gateway.config.models_ha import HaSettings, JournalSettings
from gateway.config.models_kme import (
    KmeDialectRule,
    KmeEndpointSettings,
    KmeSettings,
    KmeTlsSettings,
    kme_dialect,
)
from gateway.config.models_peer import BackoffSettings, PeerConfig
from gateway.config.models_telemetry import (
    AlarmsSettings,
    AuditSettings,
    LoggingSettings,
    MetricsSettings,
    MqttSettings,
    TelemetrySettings,
)
from gateway.config.models_tunnels import CertAuth, IpsecTunnel, PskAuth, WireGuardTunnel
from gateway.config.values import HostPort
from gateway.paths import DEFAULT_CONFIG_PATH

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AlarmsSettings",
    "AuditSettings",
    "BackoffSettings",
    "CertAuth",
    "ConfigError",
    "ConfigIssue",
    "ControlSettings",
    "GatewayConfig",
    "GatewaySettings",
    "HaSettings",
    "HostPort",
    "IpsecTunnel",
    "JournalSettings",
    "KmeDialectRule",
    "KmeEndpointSettings",
    "KmeSettings",
    "KmeTlsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "MqttSettings",
    "PeerConfig",
    "PeerDiff",
    "PskAuth",
    "TelemetrySettings",
    "WireGuardTunnel",
    "changed_sections",
    "diff_peers",
    "kme_dialect",
    "load_config",
    "parse_config",
]
