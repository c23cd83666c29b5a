"""PeerStatus: what `qsgw status` and telemetry show for one peer (no key material)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PeerStatus:
    """What `qsgw status` and telemetry show for one peer (no key material)."""

    peer_id: str
    role: str
    policy: str
    # What is shown: starting | pending | ok | degraded | stale | down | blocked | standby
    # (an HA pair's standby member: tunnel configured, blocked on purpose).
    # `ok` (and degraded, stale) only while the tunnel is live; `pending` while a
    # fresh key waits for the data plane, `down` past the liveness bound.
    state: str = "starting"
    # The key's own state: starting | ok | degraded | stale | blocked | standby.
    key_state: str = "starting"
    epoch: int = 0
    installed_at: float | None = None  # wall clock
    installed_mono: float | None = None
    sources: list[str] = field(default_factory=list)
    qkd_key_ids: list[str] = field(default_factory=list)
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    epochs_made: int = 0
    next_rekey_mono: float | None = None
    tunnel_downs: int = 0  # times the data plane dropped the tunnel on its own
    qkd_scarce: bool = False  # the link's pool is below the reserve: rekeys are spaced out
    last_tunnel_down: str | None = None
    last_tunnel_down_at: float | None = None
    tunnel_live: str = "pending"  # pending | live | down (liveness.py)
    tunnel_detail: str | None = None
    key_confirmed: bool = False  # a data-plane handshake/SA newer than the key
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    last_handshake_age_s: float | None = None
    qkd_keys_last_hour: int = 0

    def as_dict(self, now_mono: float) -> dict[str, Any]:
        return {
            "peer": self.peer_id,
            "role": self.role,
            "policy": self.policy,
            "state": self.state,
            "epoch": self.epoch,
            "key_age_s": None if self.installed_mono is None
            else round(now_mono - self.installed_mono, 3),
            "installed_at": self.installed_at,
            "sources": list(self.sources),
            "qkd_key_ids": list(self.qkd_key_ids),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "consecutive_failures": self.consecutive_failures,
            "epochs_made": self.epochs_made,
            "tunnel_downs": self.tunnel_downs,
            "qkd_scarce": self.qkd_scarce,
            "last_tunnel_down": self.last_tunnel_down,
            "last_tunnel_down_at": self.last_tunnel_down_at,
            "tunnel_live": self.tunnel_live,
            "tunnel_detail": self.tunnel_detail,
            "key_confirmed": self.key_confirmed,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "last_handshake_age_s": self.last_handshake_age_s,
            "qkd_keys_last_hour": self.qkd_keys_last_hour,
            "next_rekey_in_s": None if self.next_rekey_mono is None
            else round(max(0.0, self.next_rekey_mono - now_mono), 3),
        }
