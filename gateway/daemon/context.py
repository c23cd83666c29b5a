"""What every peer session shares: identity, journal, key supply, telemetry, settings."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig, PeerConfig
from gateway.crypto.suites import lookup_suite
from gateway.handshake import HandshakeParams, QkdPolicy
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

    def handshake_params(self, peer: PeerConfig) -> HandshakeParams:
        return HandshakeParams(
            local_id=self.gateway_id,
            peer_id=peer.id,
            identity=self.identity,
            peer_identity=PublicIdentity.from_text(peer.identity),
            suite=lookup_suite(peer.suite),
            qkd_policy=QkdPolicy(peer.qkd),
            qkd_key_count=peer.qkd_keys_per_epoch,
            timestamp_window_s=self.config.control.timestamp_window_s,
        )
