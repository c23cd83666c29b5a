"""A peer session of an HA pair member: it makes epochs only while this member is active.

The standby keeps the tunnel's configuration loaded (interface, addresses,
peer, endpoint) but blocked and silent: a random PSK, no session keys, no
keepalive, so it never sends the peer a handshake that would pull the peer's
endpoint away from the active member. It refuses INITs (the active answers).
On takeover it makes a fresh epoch at once, continuing from the shared
journal's epoch; for WireGuard it then starts the data-plane handshake itself
(the peer still holds session keys with the lost member and would otherwise
send to it until they expire); for IPsec, activate() reauthenticates with the
new PPK. The standby never holds the current epoch key: see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from gateway.config import PeerConfig
from gateway.tunnels.base import TunnelDriver, TunnelError, TunnelHealth

from .context import DaemonContext
from .ha import HaRole
from .session import PeerSession


class HaDriver:
    """The session's tunnel driver, with an HA member's standby and takeover steps."""

    def __init__(self, inner: TunnelDriver) -> None:
        self.inner = inner
        self.kick = False  # start the data-plane handshake after the next activate

    def __getattr__(self, name: str) -> Any:  # on_down and the like
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("inner", "kick"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    async def start(self) -> None:
        if hasattr(self.inner, "start_silent"):
            self.inner.start_silent = True  # the standby must never reach the peer
        await self.inner.start()

    async def install_key(self, epoch: int, key: bytes) -> None:
        await self.inner.install_key(epoch, key)

    async def activate(self, epoch: int) -> None:
        await self.inner.activate(epoch)
        handshake_now = getattr(self.inner, "handshake_now", None)
        if self.kick and handshake_now is not None:
            await handshake_now()
        self.kick = False

    async def block(self) -> None:
        quiesce = getattr(self.inner, "quiesce", None)
        await (quiesce() if quiesce is not None else self.inner.block())
        self.kick = True

    async def health(self) -> TunnelHealth:
        return await self.inner.health()

    async def stop(self, keep_tunnel: bool) -> None:
        await self.inner.stop(keep_tunnel)


class HaPeerSession(PeerSession):
    def __init__(self, ctx: DaemonContext, peer: PeerConfig, driver: TunnelDriver,
                 initiator: bool, role: HaRole) -> None:
        self.ha_driver = HaDriver(driver)
        super().__init__(ctx, peer, self.ha_driver, initiator)
        self.role = role

    async def start(self) -> None:
        await super().start()
        if not self.initiator:
            self._tasks.append(asyncio.create_task(self._responder_roles(),
                                                   name=f"ha:{self.peer.id}"))

    async def _start_tunnel(self) -> None:
        await super()._start_tunnel()
        if not self.role.active:
            await self._standby("this member is the standby")

    async def _initiator_loop(self) -> None:
        while not self._stopping:
            await self.role.wait_for(True)
            self._took_over()
            work = asyncio.create_task(PeerSession._initiator_loop(self),
                                       name=f"initiator:{self.peer.id}")
            demoted = asyncio.create_task(self.role.wait_for(False))
            try:
                await asyncio.wait({work, demoted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (work, demoted):
                    task.cancel()
                for task in (work, demoted):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if not self.role.active and not self._stopping:
                # After the handshake in flight is cancelled, so no key lands after it.
                await self._standby("another member took the virtual address")

    async def _responder_roles(self) -> None:
        while not self._stopping:
            await self.role.wait_for(True)
            self._took_over()
            await self.role.wait_for(False)
            async with self._lock:  # not in the middle of an answer
                await self._standby("another member took the virtual address")

    def _took_over(self) -> None:
        self.ha_driver.kick = True
        self.status.next_rekey_mono = time.monotonic()  # a fresh epoch at once
        if self.status.key_state == "standby":
            self.status.key_state = "starting"
            self._refresh_state()
        self._publish()

    async def _standby(self, why: str) -> None:
        self._prefetched = None  # fetched by this member, never used by any
        try:
            await self.ha_driver.block()
        except TunnelError as exc:
            self.log.error("standby: could not block the tunnel: %s", exc)
        st = self.status
        st.key_state = "standby"
        st.sources = []
        self._liveness.reset()
        st.last_error, st.last_error_at = None, None
        self.log.info("standby (%s): tunnel configured, blocked and silent", why)
        self._refresh_state()
        self._publish()

    async def handle_incoming(self, first_frame: bytes, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, control: Any = None) -> None:
        if not self.role.active:
            if control is not None:
                control.refusal("standby", self.peer.id, "this member is the standby")
            return
        await super().handle_incoming(first_frame, reader, writer, control)
