"""What every peer session shares: identity, journal, key supply, telemetry, settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import static_kem
from gateway.config import GatewayConfig, PeerConfig
from gateway.crypto.providers import KemKeyPair
from gateway.crypto.suites import Suite, lookup_suite
from gateway.handshake import HandshakeParams, QkdPolicy
from gateway.identity import LocalIdentity, PublicIdentity
from gateway.journal_api import JournalStore
from gateway.telemetry import Telemetry

from .commits import GroupCommitter, ThreadCommitter
from .keysupply import KeySupply
from .slots import InitiationSlots


@dataclass
class DaemonContext:
    config: GatewayConfig
    identity: LocalIdentity
    journal: JournalStore
    keys: KeySupply
    telemetry: Telemetry
    control_source: str | None = None  # connect to peers from here (an HA pair's VIP)
    # The journal's commits, batched (SQLite) or in a thread (PostgreSQL); None:
    # sessions commit directly (tests).
    committer: GroupCommitter | ThreadCommitter | None = None
    # How many sessions the daemon runs (liveness samples less often with thousands).
    peer_count: int = 0
    # Outgoing handshakes at once, and whether any wait for a slot (slots.py).
    initiations: InitiationSlots = field(default_factory=InitiationSlots, repr=False)
    # Static McEliece keys (0.5-1 MB) read once, not per session: by file and pin.
    _static_cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    async def last_epoch(self, peer_id: str) -> int:
        """The journal's last epoch for the peer, asked as the committer asks it."""
        if self.committer is not None:
            return await self.committer.last_epoch(peer_id)
        return self.journal.last_epoch(peer_id)

    @property
    def gateway_id(self) -> str:
        return self.config.gateway.id

    @property
    def max_frame_bytes(self) -> int:
        return self.config.control.max_frame_bytes

    def handshake_params(self, peer: PeerConfig) -> HandshakeParams:
        suite = lookup_suite(peer.suite)
        mine, theirs = self._static_keys(peer, suite)
        return HandshakeParams(
            local_id=self.gateway_id,
            peer_id=peer.id,
            identity=self.identity,
            peer_identity=PublicIdentity.from_text(peer.identity),
            suite=suite,
            qkd_policy=QkdPolicy(peer.qkd),
            qkd_key_count=peer.qkd_keys_per_epoch,
            timestamp_window_s=self.config.control.timestamp_window_s,
            static_kem_keys=mine,
            peer_static_kem_keys=theirs,
        )

    def _static_keys(
        self, peer: PeerConfig, suite: Suite
    ) -> tuple[dict[str, KemKeyPair], dict[str, bytes]]:
        """This gateway's static pair and the peer's pinned public key (McEliece
        suites; the config has checked both exist); raises StaticKemError."""
        kem = static_kem.suite_static_kem(suite)
        if kem is None or peer.static_kem is None:
            return {}, {}
        identity_dir = self.config.gateway.identity_dir
        mine_key = ("own", identity_dir, kem)
        if mine_key not in self._static_cache:
            self._static_cache[mine_key] = static_kem.load_pair(identity_dir, kem)
        pin = peer.static_kem
        theirs_key = ("peer", pin.public_file, pin.sha256, kem)
        if theirs_key not in self._static_cache:
            self._static_cache[theirs_key] = static_kem.load_pinned(
                pin.public_file, pin.sha256, kem)
        return {kem: self._static_cache[mine_key]}, {kem: self._static_cache[theirs_key]}
