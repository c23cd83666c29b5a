"""One shared, short-lived view of a wireguard-go interface's `get=1`, for all its peers.

A hub's interface carries thousands of peers, and every `get=1` lists them all:
one request per peer per health sample would cost O(N^2). Every driver of an
interface asks this view instead: a snapshot younger than the caller's
`max_age_s` is answered from memory, and concurrent callers share the one
request in flight.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.tunnels.wireguard_uapi import UapiClient, UapiDevice

__all__ = ["UapiView", "view_for"]

_views: dict[tuple[Path, float, int], UapiView] = {}


class UapiView:
    """The latest `get=1` of one interface, shared by its drivers."""

    def __init__(self, client: UapiClient) -> None:
        self._client = client
        self._device: UapiDevice | None = None
        self._at = 0.0
        self._inflight: asyncio.Future[UapiDevice] | None = None

    async def device(self, max_age_s: float, per_peer_s: float = 0.0) -> UapiDevice:
        """A snapshot at most `max_age_s` old (0: a fresh request, shared with any in
        flight), or `per_peer_s` per peer it lists if that is more: parsing a listing
        costs per peer, so a 10,000-peer interface is read every 10 s at 1 ms a peer."""
        if self._device is not None:
            age = max(max_age_s, per_peer_s * len(self._device.peers))
            if time.monotonic() - self._at <= age:
                return self._device
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        # Shielded: one caller's timeout or cancellation must not cancel the others' request.
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> UapiDevice:
        started = time.monotonic()
        try:
            dev = await self._client.get()
        finally:
            self._inflight = None
        self._device, self._at = dev, started
        return dev

    def invalidate(self) -> None:
        """After a set that changes the peer list: the next caller asks again."""
        self._device = None


def view_for(client: UapiClient) -> UapiView:
    """The one view (per event loop) of the interface that `client` talks to."""
    key = (client.path, client.timeout_s, id(asyncio.get_running_loop()))
    view = _views.get(key)
    if view is None:
        if len(_views) > 4096:  # views of loops long gone (tests): start afresh
            _views.clear()
        view = _views[key] = UapiView(client)
    return view
