"""Config models of the gateway itself (gateway:, control:) and the whole file (`GatewayConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from gateway.config.models_ha import HaSettings, JournalSettings
from gateway.config.models_kme import KmeSettings
from gateway.config.models_peer import PeerConfig
from gateway.config.models_telemetry import TelemetrySettings
from gateway.config.values import (
    HostPort,
    HostPortField,
    Name,
    PathField,
    _identity_dir,
    _Model,
    _private_dir,
)


class GatewaySettings(_Model):
    id: Name
    identity_dir: PathField = Field(default_factory=lambda: Path("/etc/qsgw/identity"))
    state_dir: PathField = Field(default_factory=lambda: Path("/var/lib/qsgw"))
    status_socket: PathField = Field(default_factory=lambda: Path("/run/qsgw/status.sock"))
    on_shutdown: Literal["keep", "block"] = "keep"

    @field_validator("identity_dir")
    @classmethod
    def _identity(cls, value: Path, info: ValidationInfo) -> Path:
        _identity_dir(value, info)
        if isinstance(info.context, dict):  # for the peers' static-key check
            info.context["identity_dir"] = value
        return value

    @field_validator("state_dir")
    @classmethod
    def _state(cls, value: Path, info: ValidationInfo) -> Path:
        return _private_dir(value, info, "state_dir")


class ControlSettings(_Model):
    listen: HostPortField = Field(default_factory=lambda: HostPort("0.0.0.0", 7814))  # noqa: S104
    max_frame_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    rate_limit_per_s: float = Field(default=5.0, gt=0)
    timestamp_window_s: float = Field(default=60, gt=0, le=3600)
    # Admission and load shedding (gateway.daemon.admission / conntable): what an
    # attacker at a peer's address can hold before it is refused or evicted.
    max_connections: int = Field(default=128, ge=4, le=65536)
    max_connections_per_source: int = Field(default=8, ge=1, le=1024)
    max_connections_per_peer: int = Field(default=2, ge=1, le=64)
    max_frames_per_connection: int = Field(default=4, ge=2, le=64)
    first_frame_timeout_s: float = Field(default=5.0, gt=0, le=60)
    lock_wait_s: float = Field(default=2.0, gt=0, le=30)
    flood_alarm_refusals: int = Field(default=50, ge=1)  # within 10 s: control_flood


class GatewayConfig(_Model):
    gateway: GatewaySettings
    control: ControlSettings = Field(default_factory=ControlSettings)
    kme: KmeSettings
    peers: tuple[PeerConfig, ...] = ()
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    ha: HaSettings | None = None

    def peer(self, peer_id: str) -> PeerConfig:
        for p in self.peers:
            if p.id == peer_id:
                return p
        raise KeyError(peer_id)
