"""The watch over a session's tunnel: key expiry (fail closed) and data-plane liveness.

A mixin of PeerSession: it reads and updates the session's status and liveness.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.tunnels.base import TunnelError, TunnelHealth

from .liveness import DOWN, LIVE, PENDING

if TYPE_CHECKING:
    from gateway.config import PeerConfig
    from gateway.telemetry.logs import PeerAdapter
    from gateway.tunnels.base import TunnelDriver

    from .context import DaemonContext
    from .liveness import Liveness
    from .peer_status import PeerStatus

# How often the data plane is asked whether the tunnel carries traffic; with many
# peers, less often, so that the gateway samples at most LIVENESS_SAMPLES_PER_S
# tunnels a second (10,000 peers: each every 10 s, against a 30 s bound).
LIVENESS_POLL_S = 2.0
LIVENESS_SAMPLES_PER_S = 1000.0
# How long the expiry watch sleeps while there is no key to watch.
EXPIRY_IDLE_S = 5.0
# The responder installs a key before its DONE goes out, the initiator once DONE
# arrives. A data-plane handshake the responder started at once would meet the peer
# still on the last key and fail; wireguard-go counts its answer as a handshake sent,
# which holds the peer's own (good) one back for REKEY_TIMEOUT, 5 s: with a fast
# rekey, epoch after epoch. So the initiator prompts the handshake, and the responder
# only this long after its key, if the tunnel is still not live (an initiator with no
# endpoint cannot start it).
RESPONDER_PROMPT_DELAY_S = 1.0


class TunnelWatch:
    """Key expiry and liveness for PeerSession (which sets these attributes)."""

    ctx: DaemonContext
    peer: PeerConfig
    driver: TunnelDriver
    status: PeerStatus
    log: PeerAdapter
    _liveness: Liveness
    _lock: asyncio.Lock
    _stopping: bool
    _last_failure: str | None
    _tasks: list[asyncio.Task[None]]
    initiator: bool
    _tunnel_cause: str | None = None

    def _publish(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ policy

    def _expiry_delay(self) -> float:
        """Seconds until the key's lifetime can next run out: the watch sleeps until
        then instead of polling (thousands of peers, each waking twice a second, cost
        a core). A newer key moves the deadline, seen when the watch wakes; the
        down-for-the-lifetime deadline always falls after the key's own."""
        st = self.status
        if st.installed_mono is None or st.key_state in ("blocked", "stale"):
            return EXPIRY_IDLE_S
        due = st.installed_mono + self.peer.key_lifetime_s - time.monotonic()
        if self.peer.qkd == "required" and st.state == "down":
            due = min(due, self._liveness.down_since_mono + self.peer.key_lifetime_s
                      - time.monotonic())
        return min(EXPIRY_IDLE_S * 12, max(0.05, due))

    async def _expiry_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._expiry_delay())
            st = self.status
            if st.installed_mono is None or st.key_state in ("blocked", "stale", "standby"):
                continue
            if (self.peer.qkd == "required" and st.state == "down"
                    and time.monotonic() - self._liveness.down_since_mono
                    >= self.peer.key_lifetime_s):
                # Keys that no tunnel takes are no fresh key: fail closed all the same.
                await self._block(f"tunnel down for longer than the key lifetime "
                                  f"({self.peer.key_lifetime_s:g} s): {st.tunnel_detail}")
                self._refresh_state()
                self._publish()
                continue
            if time.monotonic() - st.installed_mono < self.peer.key_lifetime_s:
                continue
            if self.peer.qkd == "required":
                await self._block("key lifetime passed with no fresh QKD-keyed epoch")
            else:
                st.key_state = "stale"
                self.log.warning("key lifetime passed; policy %s keeps the last key", self.peer.qkd)
            self._refresh_state()
            self._publish()

    async def _block(self, why: str) -> None:
        try:
            await self.driver.block()
        except TunnelError as exc:
            self.log.error("could not block the tunnel: %s", exc)
        self.status.key_state = "blocked"
        self._liveness.reset()
        self.status.sources = []  # no key in use: nothing to show as its sources
        # The latest attempt's failure is the likeliest reason no fresh epoch came.
        cause = self._last_failure
        self.status.last_error = f"blocked: {why}" + (f"; last attempt: {cause}" if cause else "")
        self.status.last_error_at = time.time()
        self.log.error("tunnel blocked (policy required): %s", why)

    # ------------------------------------------------------------------ liveness

    async def _prompt_if_quiet(self) -> None:
        """A fresh key on a tunnel that is not live: start its data-plane handshake now.
        WireGuard stops retrying 90 s after its first failed attempt, and its keepalive
        is armed only by traffic: a quiet tunnel blocked longer than that (a satellite
        gap) would sit with a good key, pending and then down, until traffic came."""
        kick = getattr(self.driver, "handshake_now", None)
        if kick is None or self._liveness.verdict.state == LIVE:
            return
        if self.initiator:
            await self._kick(kick)
            return
        # Later, off the handshake: see RESPONDER_PROMPT_DELAY_S.
        task = asyncio.create_task(self._prompt_later(kick, self.status.installed_mono),
                                   name=f"prompt:{self.peer.id}")
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    async def _kick(self, kick: Callable[[], Awaitable[None]]) -> None:
        try:
            await kick()
        except TunnelError as exc:
            self.log.warning("could not start the data-plane handshake: %s", exc)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:  # stop() may have cleared the list already
            self._tasks.remove(task)

    async def _prompt_later(self, kick: Callable[[], Awaitable[None]],
                            key_mono: float | None) -> None:
        await asyncio.sleep(RESPONDER_PROMPT_DELAY_S)
        if self._stopping or self._lock.locked() or self.status.installed_mono != key_mono:
            return  # stopping, a handshake is on, or a newer key (which prompts for itself)
        try:
            await self._check_liveness()  # fresh: the initiator's handshake may have come
            if self._liveness.verdict.state != LIVE:
                await self._kick(kick)
        except Exception as exc:  # a task of its own: nothing else would see it
            self.log.error("data-plane prompt failed: %s: %s", type(exc).__name__, exc)

    def _liveness_poll_s(self) -> float:
        return max(LIVENESS_POLL_S, self.ctx.peer_count / LIVENESS_SAMPLES_PER_S)

    async def _liveness_loop(self) -> None:
        # A random phase: thousands of sessions started together sample spread out.
        await asyncio.sleep(random.uniform(0.0, self._liveness_poll_s()))
        while not self._stopping:
            await asyncio.sleep(self._liveness_poll_s())
            try:
                await self._check_liveness()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must outlive any one bad sample
                self.log.error("liveness check failed: %s: %s", type(exc).__name__, exc)

    async def _check_liveness(self, in_handshake: bool = False) -> None:
        """Ask the data plane whether the tunnel carries traffic; `down` past the bound."""
        st = self.status
        if st.key_state in ("starting", "blocked", "standby"):
            return  # nothing to judge (an HA standby's tunnel is blocked on purpose)
        last: tuple[TunnelHealth, float] | None = getattr(self, "_last_health", None)
        if self._lock.locked() and not in_handshake:
            # A handshake (an IPsec initiation can take seconds) holds the driver:
            # judge by the last sample, aged, so the bound still runs out on a dead tunnel.
            health = TunnelHealth(up=False, detail="no data-plane sample yet")
            if last is not None:
                sample, at = last
                age = sample.last_handshake_age_s
                health = dataclasses.replace(
                    sample, last_handshake_age_s=None if age is None
                    else age + time.monotonic() - at)
        else:
            try:
                health = await asyncio.wait_for(self.driver.health(), 5)
            except TimeoutError:
                health = TunnelHealth(up=False,
                                      detail="the tunnel driver did not answer within 5 s")
            except TunnelError as exc:
                health = TunnelHealth(up=False, detail=f"tunnel driver: {exc}")
            except Exception as exc:  # a driver bug must not stop the watch
                health = TunnelHealth(up=False, detail=f"tunnel driver: {type(exc).__name__}")
            self._last_health = (health, time.monotonic())
        was = self._liveness.verdict.state
        verdict = self._liveness.observe(health, time.monotonic())
        st.tunnel_live, st.tunnel_detail = verdict.state, verdict.reason
        st.key_confirmed = verdict.confirmed
        st.rx_bytes, st.tx_bytes = health.rx_bytes, health.tx_bytes
        st.last_handshake_age_s = health.last_handshake_age_s
        self.ctx.telemetry.tunnel_health(self.peer.id, verdict.state == "live",
                                         health.rx_bytes, health.tx_bytes)
        # The latest tunnel failure since the tunnel was last live: a KME outage in a
        # later attempt is its own alarm, and does not hide why the tunnel is down.
        if self._last_failure is not None and self._last_failure.startswith("tunnel:"):
            self._tunnel_cause = self._last_failure
        if verdict.state == "live":
            self._tunnel_cause = None
        cause = self._tunnel_cause
        if verdict.state == DOWN and cause is not None:
            # What the latest attempt's tunnel ran into is the likeliest cause: say it
            # (a KME outage meanwhile is its own alarm, not why the tunnel is down).
            verdict.reason = f"{verdict.reason}; last attempt: {cause}"
            st.tunnel_detail = verdict.reason
            if was == DOWN:
                st.last_tunnel_down = verdict.reason
        if verdict.state == DOWN and was != DOWN:
            st.tunnel_downs += 1
            st.last_tunnel_down, st.last_tunnel_down_at = verdict.reason, time.time()
            st.last_error, st.last_error_at = f"tunnel down: {verdict.reason}", time.time()
            self.log.error("tunnel down: %s", verdict.reason)
            self.ctx.telemetry.alarm("tunnel_down", self.peer.id, True, verdict.reason)
        elif was == DOWN and verdict.state != DOWN:
            self.log.info("tunnel live again: %s", verdict.reason)
            self.ctx.telemetry.alarm("tunnel_down", self.peer.id, False, verdict.reason)
        self._refresh_state()

    def tunnel_doc(self) -> dict[str, Any]:
        """The tunnel's last data-plane sample, for the status document (no I/O: the
        status of thousands of peers is answered from what liveness last saw)."""
        last: tuple[TunnelHealth, float] | None = getattr(self, "_last_health", None)
        if last is None:
            return {"up": False, "detail": "no data-plane sample yet",
                    "last_handshake_age_s": None}
        health, at = last
        age = health.last_handshake_age_s
        return {"up": health.up, "detail": health.detail,
                "last_handshake_age_s": None if age is None
                else round(age + time.monotonic() - at, 1)}

    def _refresh_state(self) -> None:
        """The shown state: the key's state, held back to pending/down by liveness."""
        st = self.status
        shown = st.key_state
        if shown not in ("starting", "blocked", "standby"):
            live = self._liveness.verdict.state
            if live == DOWN:
                shown = "down"
            elif live == PENDING:
                shown = "pending"
        if shown != st.state:
            old, st.state = st.state, shown
            self.ctx.telemetry.policy_changed(self.peer.id, old, shown)
            self._publish()
