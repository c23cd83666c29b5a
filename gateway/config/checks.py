"""Config checks across sections and peers (duplicate IDs, ports, own IDs), on the raw data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.config.values import (
    HostPort,
    _parse_hostport,
)
from gateway.config.yamlloc import Loc


def _get(data: Any, *path: str) -> Any:
    """A value from the raw data, or None where the path is absent or not a mapping."""
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _cross_checks(data: dict[str, Any]) -> Iterator[tuple[Loc, str]]:
    """Checks across sections and peers, each reported at the field that clashes.

    They run on the raw data, so they are reported together with any type errors.
    """
    raw_peers = data.get("peers")
    # Each peer's fields read once (a hub's 10,000 peers are read by every check).
    peers = [(i, _flat(p)) for i, p in enumerate(raw_peers)] \
        if isinstance(raw_peers, tuple) else []

    def dupes(
        field: tuple[str, ...], what: str, tunnel_type: str | None = None
    ) -> Iterator[tuple[Loc, str]]:
        seen: dict[object, int] = {}
        for i, peer in peers:
            if tunnel_type is not None and _get(peer, "tunnel", "type") != tunnel_type:
                continue
            value = _get(peer, *field)
            if value is None or isinstance(value, dict | tuple):
                continue
            if value in seen:
                yield (
                    ("peers", i, *field),
                    f"duplicate {what} '{value}' (peers[{seen[value]}] has it too); "
                    "each peer needs its own",
                )
            else:
                seen[value] = i

    yield from dupes(("id",), "peer id")
    yield from dupes(("sae_id",), "SAE ID")
    yield from _interface_dupes(peers)
    yield from dupes(("tunnel", "listen_port"), "WireGuard listen port", "wireguard")
    yield from dupes(("tunnel", "connection"), "connection", "ipsec")
    yield from dupes(("tunnel", "ppk_id"), "ppk_id", "ipsec")
    own_id, own_sae = _get(data, "gateway", "id"), _get(data, "kme", "sae_id")
    for i, peer in peers:
        if own_id is not None and _get(peer, "id") == own_id:
            yield (
                ("peers", i, "id"),
                f"'{own_id}' is this gateway's own id (gateway.id); a peer must be another gateway",
            )
        if own_sae is not None and _get(peer, "sae_id") == own_sae:
            yield (
                ("peers", i, "sae_id"),
                f"'{own_sae}' is this gateway's own SAE ID (kme.sae_id); give the peer's SAE ID",
            )
    if isinstance(data.get("ha"), dict) and _get(data, "journal", "backend") != "postgresql":
        yield (("ha",), "an HA pair shares one journal: set journal.backend: postgresql "
                        "(a local SQLite journal would let both members use a key_ID)")
    metrics = _hostport_or_none(_get(data, "telemetry", "metrics", "listen"))
    control = _hostport_or_none(_get(data, "control", "listen")) or HostPort("0.0.0.0", 7814)  # noqa: S104
    wildcards = ("0.0.0.0", "::")  # noqa: S104
    if (
        metrics is not None
        and metrics.port == control.port
        and (metrics.host == control.host or metrics.host in wildcards or control.host in wildcards)
    ):
        yield (
            ("telemetry", "metrics", "listen"),
            f"port {metrics.port} is control.listen's too; pick another TCP port",
        )


_TUNNEL_FIELDS = ("type", "interface", "manage", "peer_public_key", "listen_port",
                  "connection", "ppk_id")


def _flat(peer: Any) -> dict[str, Any]:
    """The fields the checks read, in a mapping of one level: {"id": .., "tunnel": {..}}."""
    if not isinstance(peer, dict):
        return {}
    tunnel = peer.get("tunnel")
    return {"id": peer.get("id"), "sae_id": peer.get("sae_id"),
            "tunnel": {k: tunnel.get(k) for k in _TUNNEL_FIELDS}
            if isinstance(tunnel, dict) else None}


def _interface_dupes(peers: list[tuple[int, Any]]) -> Iterator[tuple[Loc, str]]:
    """A WireGuard interface is one peer's (manage: full) or shared by peers that key an
    interface managed elsewhere (manage: psk-only, a hub's interface with many peers),
    each with its own peer_public_key."""
    owner: dict[object, tuple[int, str]] = {}
    keys: dict[tuple[object, object], int] = {}
    for i, peer in peers:
        if _get(peer, "tunnel", "type") != "wireguard":
            continue
        name = _get(peer, "tunnel", "interface")
        if name is None or isinstance(name, dict | tuple):
            continue
        manage = _get(peer, "tunnel", "manage") or "full"
        first = owner.setdefault(name, (i, manage))
        if first[0] != i and (manage != "psk-only" or first[1] != "psk-only"):
            yield (("peers", i, "tunnel", "interface"),
                   f"duplicate interface '{name}' (peers[{first[0]}] has it too); each peer "
                   "needs its own, unless every peer on it has manage: psk-only")
            continue
        pk = _get(peer, "tunnel", "peer_public_key")
        if isinstance(pk, str):
            if (name, pk) in keys:
                yield (("peers", i, "tunnel", "peer_public_key"),
                       f"duplicate peer_public_key on interface '{name}' (peers[{keys[name, pk]}]"
                       " has it too); each peer of an interface needs its own")
            else:
                keys[name, pk] = i


def _hostport_or_none(value: Any) -> HostPort | None:
    try:
        parsed = _parse_hostport(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, HostPort) else None
