"""What every peer session shares: identity, journal, key supply, telemetry, settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig, PeerConfig
from gateway.identity import LocalIdentity, PublicIdentity
from gateway.journal import Journal
from gateway.telemetry import Telemetry

from .keysupply import KeySupply


@dataclass
class DaemonContext:
    config: GatewayConfig
    identity: LocalIdentity
    journal: Journal
    keys: KeySupply
    telemetry: Telemetry

    @property
    def gateway_id(self) -> str:
        return self.config.gateway.id

    @property
    def max_frame_bytes(self) -> int:
        return self.config.control.max_frame_bytes

    def handshake_params(self, peer: PeerConfig, epoch: int) -> Any:
        from gateway.crypto.suites import lookup_suite
        from gateway.handshake import HandshakeParams

        return HandshakeParams(
            local_id=self.gateway_id,
            peer_id=peer.id,
            local_identity=self.identity,
            peer_identity=PublicIdentity.from_text(peer.identity),
            suite=lookup_suite(peer.suite),
            policy=peer.qkd,
            qkd_key_count=peer.qkd_keys_per_epoch,
            epoch=epoch,
            timestamp_window_s=self.config.control.timestamp_window_s,
        )
