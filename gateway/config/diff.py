"""The reload diff: peers a new config adds, removes or changes; other sections that differ."""

from __future__ import annotations

from typing import NamedTuple

from gateway.config.models_gateway import GatewayConfig
from gateway.config.models_peer import PeerConfig


def changed_sections(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """Top-level sections other than `peers` that differ (a reload cannot apply them live
    unless the daemon supports it; it should say which ones it ignored)."""
    return tuple(
        name
        for name in type(old).model_fields
        if name != "peers" and getattr(old, name) != getattr(new, name)
    )


class PeerDiff(NamedTuple):
    """What a reload changes: peers to start, to stop, and to restart with new settings."""

    added: tuple[PeerConfig, ...]
    removed: tuple[PeerConfig, ...]
    changed: tuple[PeerConfig, ...]


def diff_peers(old: GatewayConfig, new: GatewayConfig) -> PeerDiff:
    """Compare peers by id; `changed` holds the new settings of peers whose settings differ."""
    before = {p.id: p for p in old.peers}
    after = {p.id: p for p in new.peers}
    return PeerDiff(
        added=tuple(p for i, p in after.items() if i not in before),
        removed=tuple(p for i, p in before.items() if i not in after),
        # `is` first: a peer file unchanged since the last load is the same model.
        changed=tuple(p for i, p in after.items()
                      if i in before and before[i] is not p and before[i] != p),
    )
