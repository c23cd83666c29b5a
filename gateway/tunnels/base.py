"""The interface every tunnel driver (WireGuard, strongSwan) offers the daemon.

The daemon only ever talks to a `TunnelDriver`; which data plane sits behind it
is a config choice. Drivers raise `TunnelError` and nothing else, and no
message they produce carries key material.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["TunnelDriver", "TunnelError", "TunnelHealth"]


class TunnelError(RuntimeError):
    """A tunnel driver could not do what was asked.

    The message names the interface/connection and the problem, never a key.
    """


@dataclass(frozen=True, slots=True)
class TunnelHealth:
    """What `qsgw status` shows about one tunnel."""

    up: bool
    detail: str
    #: Seconds since the last completed data-plane handshake; None if never
    #: (or unknown for this driver).
    last_handshake_age_s: float | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None


@runtime_checkable
class TunnelDriver(Protocol):
    """One tunnel to one remote site, keyed by the epoch keys qsgw makes."""

    async def start(self) -> None:
        """manage: full creates and configures; psk-only/ppk-only checks it exists."""
        ...

    async def install_key(self, epoch: int, key: bytes) -> None:
        """Install the 32-byte epoch key (WireGuard PSK / IKEv2 PPK)."""
        ...

    async def activate(self, epoch: int) -> None:
        """Called on the initiating side once both sides hold the epoch key.

        WireGuard: nothing to do (the next handshake uses the new PSK).
        IPsec: reauthenticate so that the new PPK is used.
        """
        ...

    async def block(self) -> None:
        """Policy `required` ran out of fresh keys: no traffic may flow any more."""
        ...

    async def health(self) -> TunnelHealth:
        """Up/down and detail, for `qsgw status` and telemetry."""
        ...

    async def stop(self, keep_tunnel: bool) -> None:
        """Stop managing; with keep_tunnel=False also tear down what start() made."""
        ...
