"""One peer's session: drives the handshake state machine, installs keys, applies policy.

The initiator rekeys on the interval and retries failures with backoff and jitter
(keypolicy); the responder answers INITs dispatched by the control server. Both watch
the key's lifetime: under `required` an expired key with no fresh one behind it blocks
the tunnel (fail closed); under `preferred`/`off` it keeps its last key, shown stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config import PeerConfig
from gateway.crypto.memory import wipe
from gateway.handshake import (
    CommitEpoch,
    FailureReason,
    FetchQkdKeys,
    FetchQkdKeysById,
    HandshakeFailed,
    InitiatorHandshake,
    InitiatorState,
    InstallKey,
    Rejected,
    ResponderHandshake,
    SendMessage,
)
from gateway.journal import EpochRangeError, KeyReuseError, StaleEpochError
from gateway.telemetry.logs import bind_peer, peer_logger
from gateway.tunnels.base import TunnelDriver, TunnelError
from kms_client import KmsError

from . import keypolicy
from .channel import (
    Channel,
    OutgoingChannel,
    SessionFailure,
    as_failure,
    describe_kms_error,
    receive_failure,
)
from .context import DaemonContext
from .framing import FrameError
from .keypolicy import KEY_BUDGET_WINDOW_S, PREFETCH_RESERVE_EPOCHS, KeyBudget
from .keysupply import DeliveredKey
from .liveness import DOWN, Liveness
from .peer_status import PeerStatus
from .watch import TunnelWatch

__all__ = ["HANDSHAKE_TIMEOUT_S", "PREFETCH_RESERVE_EPOCHS", "PeerSession", "PeerStatus",
           "SessionFailure"]

log = logging.getLogger("qsgw.session")

HANDSHAKE_TIMEOUT_S = 30.0


class PeerSession(TunnelWatch):
    def __init__(self, ctx: DaemonContext, peer: PeerConfig, driver: TunnelDriver,
                 initiator: bool) -> None:
        self.ctx = ctx
        self.peer = peer
        self.driver = driver
        self.initiator = initiator
        self.status = PeerStatus(peer.id, "initiator" if initiator else "responder", peer.qkd)
        # Fixed for the session's life (a changed peer gets a new session on reload).
        self._params = ctx.handshake_params(peer)
        self._tasks: list[asyncio.Task[None]] = []
        self._rekey_now = asyncio.Event()
        self._lock = asyncio.Lock()  # one handshake at a time per peer
        self._stopping = False
        self.tunnel_started = False
        # The next epoch's QKD keys, fetched as master once an epoch is made so that
        # enc_keys is off the rekey path (and the keys have time to reach the slave
        # KME). Used once, by the next handshake; journalled when used (CommitEpoch).
        self._prefetched: list[DeliveredKey] | None = None
        # The after-epoch key-supply check (and the prefetch it may start).
        self._supply_task: asyncio.Task[None] | None = None
        # key_ID -> the KME's key_ID_extension of the keys handed to the current
        # handshake: where each key came from, for the epoch's audit record. Metadata
        # only; the key bytes go to the machine and nowhere else.
        self._key_origins: dict[str, Mapping[str, Any] | None] = {}
        self.log = peer_logger(log, peer.id)
        self._liveness = Liveness(float(getattr(peer.tunnel, "liveness_s", 30.0)),
                                  require_confirm=peer.tunnel.type == "ipsec")
        # When this peer's handshakes were handed QKD keys (the key budget).
        self._budget = KeyBudget()
        self._attempt_spent = False
        self._last_failure: str | None = None  # since the last epoch the tunnel took
        self._triggered_mono = 0.0  # when the current handshake was due (or INIT came)
        if hasattr(driver, "on_down"):
            # IPsec: charon reports a tunnel it dropped on its own; bring it back.
            driver.on_down = self._on_tunnel_down

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._main(), name=f"session:{self.peer.id}"))
        self._publish()

    async def _main(self) -> None:
        bind_peer(self.peer.id)  # every log line of this task names the peer
        await self._start_tunnel()
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name=f"expiry:{self.peer.id}"))
        self._tasks.append(asyncio.create_task(self._liveness_loop(),
                                               name=f"liveness:{self.peer.id}"))
        if self.initiator:
            self.status.next_rekey_mono = time.monotonic()
            await self._initiator_loop()

    async def _start_tunnel(self) -> None:
        # A tunnel that cannot start yet (interface missing, charon not up) is
        # retried with backoff; the peer shows the error meanwhile.
        delay = self.peer.retry_backoff_s.initial
        while True:
            try:
                await self.driver.start()
                self.tunnel_started = True
                return
            except TunnelError as exc:
                self.status.last_error = f"tunnel start failed: {exc}"
                self.status.last_error_at = time.time()
                self.log.error("tunnel start failed: %s", exc)
                self._publish()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(self.peer.retry_backoff_s.max, delay * 2)

    async def stop(self, keep_tunnel: bool) -> None:
        self._stopping = True
        self._prefetched = None  # unused keys are dropped, never used elsewhere
        if self._supply_task is not None:
            self._tasks.append(self._supply_task)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._liveness.verdict.state == DOWN:
            # This session's judgement ends with it (a reload starts a new one).
            self.ctx.telemetry.alarm("tunnel_down", self.peer.id, False, "session stopped")
        if not keep_tunnel:
            with contextlib.suppress(TunnelError):
                await self.driver.block()
        with contextlib.suppress(TunnelError):
            await self.driver.stop(keep_tunnel=keep_tunnel)

    def _on_tunnel_down(self, detail: str) -> None:
        st = self.status
        st.tunnel_downs += 1
        st.last_tunnel_down = detail
        st.last_tunnel_down_at = st.last_error_at = time.time()
        st.last_error = f"tunnel down: {detail}"
        self.log.warning("tunnel went down: %s", detail)
        self._publish()
        if self.initiator and self.status.key_state != "blocked":
            self.trigger_rekey()  # a new epoch, installed and activated, brings it back

    def trigger_rekey(self) -> None:
        """Start a handshake now (SIGUSR1 to the daemon, a tunnel that went down)."""
        self._rekey_now.set()

    # ------------------------------------------------------------------ initiator

    async def _initiator_loop(self) -> None:
        backoff = self.peer.retry_backoff_s
        while not self._stopping:
            # Re-read the deadline after each wake: a key-supply check may move it.
            while not self._rekey_now.is_set():
                assert self.status.next_rekey_mono is not None
                delay = self.status.next_rekey_mono - time.monotonic()
                if delay <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rekey_now.wait(), delay)
            self._rekey_now.clear()
            wait = self._budget_wait()
            if wait > 0:
                self.log.warning("QKD key budget spent: %d epochs' keys in the last %.0f s, the "
                                 "most a healthy tunnel uses; next attempt in %.0f s",
                                 len(self._budget.spends), KEY_BUDGET_WINDOW_S, wait)
                self.status.next_rekey_mono = time.monotonic() + wait
                self._publish()
                continue
            self._attempt_spent = False
            self._triggered_mono = time.monotonic()
            try:
                async with self.ctx.initiations, self._lock:
                    await asyncio.wait_for(self._initiate_once(), HANDSHAKE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is recorded, then retried
                failure = as_failure(exc, HANDSHAKE_TIMEOUT_S)
                self._record_failure(failure)
                base = keypolicy.retry_base(self.status.consecutive_failures, backoff.initial,
                                            backoff.max, self.peer.rekey_interval_s,
                                            self._attempt_spent)
                if failure.reason == "qkd_unavailable":
                    self._set_scarce(True, "no QKD key for this epoch")
                    base = self._share_scarce_keys(base)
                # Full jitter (0.5-1 x base): gateways that failed together retry apart.
                self.status.next_rekey_mono = time.monotonic() + base * random.uniform(0.5, 1.0)
            else:
                first = self.status.epochs_made == 1
                self._start_supply_check()  # before the hold: a boot's checks stay spread
                if first and not self._rekey_now.is_set():  # spread after a boot (slots.py)
                    self.status.next_rekey_mono = None  # drawn after (scarce: as a later one)
                    await self.ctx.initiations.drained(keypolicy.first_rekey_hold(
                        self.peer.rekey_interval_s, self.peer.key_lifetime_s))
                self.status.next_rekey_mono = time.monotonic() + keypolicy.jittered_interval(
                    self._rekey_interval(), first=first and not self.status.qkd_scarce)
            self._publish()

    def _budget_wait(self) -> float:
        """Seconds until this peer may spend another epoch's QKD keys (0: now)."""
        if self.peer.qkd == "off":
            return 0.0
        now = time.monotonic()
        self.status.qkd_keys_last_hour = self._budget.count(now) * self.peer.qkd_keys_per_epoch
        return self._budget.wait(now, self.peer.rekey_interval_s)

    def _rekey_interval(self) -> float:
        """The rekey interval, stretched while QKD keys are scarce (keypolicy)."""
        return keypolicy.rekey_interval(self.peer.rekey_interval_s, self.peer.key_lifetime_s,
                                        self.status.qkd_scarce)

    def _set_scarce(self, scarce: bool, why: str) -> None:
        if scarce == self.status.qkd_scarce:
            return
        self.status.qkd_scarce = scarce
        if scarce:
            self.log.warning("QKD keys scarce (%s): rekeying every %.1f s until the pool "
                             "recovers", why, self._rekey_interval())
        else:
            self.log.info("QKD key supply recovered (%s): rekeying every %.1f s again", why,
                          self._rekey_interval())

    def _share_scarce_keys(self, base: float) -> float:
        """The retry delay when the KME had no key for us, by the need of our key."""
        installed = self.status.installed_mono
        age = None if installed is None or self.status.key_state == "blocked" \
            else time.monotonic() - installed
        return keypolicy.share_scarce_keys(base, self.peer.retry_backoff_s.initial,
                                           self.peer.key_lifetime_s, age)

    def _start_supply_check(self) -> None:
        if self.peer.qkd == "off":
            return
        if self._supply_task is not None and not self._supply_task.done():
            return
        self._supply_task = asyncio.create_task(self._check_supply(), name=f"supply:{self.peer.id}")

    async def _check_supply(self) -> None:
        """After an epoch: ask the KME how many keys the link holds (ETSI 014 status).
        Below the reserve, keys are scarce: the rekey interval stretches and nothing
        is prefetched; at or above it, the next epoch's keys are prefetched."""
        try:
            stored, _ = await self.ctx.keys.pool_status(self.peer.sae_id)
        except KmsError as exc:
            self.log.info("QKD pool status unavailable (%s)", exc)
            return
        reserve = PREFETCH_RESERVE_EPOCHS * self.peer.qkd_keys_per_epoch
        self._set_scarce(stored < reserve, f"{stored} keys stored, reserve {reserve}")
        if self.status.qkd_scarce:
            st = self.status
            if st.installed_mono is not None and st.next_rekey_mono is not None:
                st.next_rekey_mono = max(st.next_rekey_mono,
                                         st.installed_mono + self._rekey_interval())
            return
        # kme.prefetch: false for KMEs that drop undelivered keys on the next enc_keys.
        if self.peer.qkd_prefetch and self.ctx.config.kme.prefetch and self._prefetched is None:
            await self._prefetch()

    async def _prefetch(self) -> None:
        try:
            keys = await self.ctx.keys.fetch_new(self.peer.id, self.peer.sae_id,
                                                 self.peer.qkd_keys_per_epoch)
        except KmsError as exc:
            # Not an error yet: the next handshake fetches on demand and reports it.
            self.log.info("QKD prefetch failed (%s); will fetch at the next epoch", exc)
            return
        self._prefetched = keys

    async def _initiate_once(self) -> None:
        # The machine's CommitEpoch makes this epoch durable before INIT leaves,
        # so after a crash the next attempt is always above it.
        epoch = await self.ctx.last_epoch(self.peer.id) + 1
        machine = InitiatorHandshake(self._params, epoch, time.time())
        channel = self._outgoing()
        try:
            actions = machine.start(time.time())
            await self._pump(machine, actions, channel)
        finally:
            await channel.close()

    def _outgoing(self) -> OutgoingChannel:  # from the HA pair's virtual address, if any
        return OutgoingChannel(self.peer.id, self.peer.control.host, self.peer.control.port,
                               self.ctx.max_frame_bytes, source=self.ctx.control_source)

    # ------------------------------------------------------------------ responder

    async def handle_incoming(self, first_frame: bytes, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, control: Any = None) -> None:
        """An admitted INIT (see daemon.admission). `control` counts a refusal here."""
        bind_peer(self.peer.id)
        self._triggered_mono = time.monotonic()
        channel = Channel(reader, writer, self.ctx.max_frame_bytes)
        if not self.tunnel_started:
            self.log.warning("refused an INIT: the tunnel is not up yet")
            return
        if self.initiator:
            self.ctx.telemetry.handshake_failed(self.peer.id, "role_conflict")
            self.log.warning("refused an INIT: this gateway initiates towards %s", self.peer.id)
            return
        try:
            # Bounded: an admitted INIT that finds the peer's handshake still going
            # is refused, not queued (the initiator retries with a higher epoch).
            await asyncio.wait_for(self._lock.acquire(), self.ctx.config.control.lock_wait_s)
        except TimeoutError:
            if control is not None:
                control.refusal("lock_timeout", self.peer.id, "a handshake is in progress")
            return
        try:
            try:
                machine = ResponderHandshake(self._params,
                                             await self.ctx.last_epoch(self.peer.id), time.time())
                actions = machine.on_message(first_frame, time.time())
                await asyncio.wait_for(self._pump(machine, actions, channel), HANDSHAKE_TIMEOUT_S)
            finally:
                self._lock.release()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_failure(as_failure(exc, HANDSHAKE_TIMEOUT_S))
            self._publish()

    # ------------------------------------------------------------------ the pump

    async def _pump(self, machine: InitiatorHandshake | ResponderHandshake,
                    actions: list[Any], channel: Channel | OutgoingChannel) -> None:
        """Carry out the machine's actions until it has installed or failed."""
        started = time.monotonic()
        queue = list(actions)
        installed_epoch: int | None = None
        while True:
            while queue:
                action = queue.pop(0)
                if self.log.isEnabledFor(logging.DEBUG):  # a timeline of the handshake
                    self.log.debug("action %s at +%.2f ms", type(action).__name__,
                                   (time.monotonic() - started) * 1e3)
                if isinstance(action, SendMessage):
                    await channel.send(action.data)
                elif isinstance(action, CommitEpoch):
                    aborted = await self._commit(machine, action)
                    if aborted:
                        queue = aborted  # an abort clears what follows it (INIT, dec_keys)
                elif isinstance(action, FetchQkdKeys):
                    queue.extend(await self._fetch_new(machine, action))
                elif isinstance(action, FetchQkdKeysById):
                    queue.extend(await self._fetch_by_id(machine, action))
                elif isinstance(action, InstallKey):
                    await self._install(action, time.monotonic() - started)
                    installed_epoch = action.epoch
                    if isinstance(machine, ResponderHandshake):
                        queue.extend(machine.on_installed(time.time()))
                elif isinstance(action, Rejected):
                    # The first refused frame ends the handshake and its connection:
                    # a connection cannot be kept busy with forged or replayed frames.
                    machine.abort(action.reason, time.time())  # wipes its secrets
                    raise SessionFailure(action.reason.value,
                                         f"message refused, connection closed: {action.detail}")
                elif isinstance(action, HandshakeFailed):
                    raise SessionFailure(action.reason.value, action.detail)
            if machine.finished:
                break
            try:
                frame = await channel.receive()
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug("frame of %d bytes at +%.2f ms", len(frame),
                                   (time.monotonic() - started) * 1e3)
            except (FrameError, SessionFailure) as exc:
                awaiting_done = getattr(machine, "state", None) is InitiatorState.AWAIT_DONE
                queue.extend(machine.abort(FailureReason.TIMEOUT, time.time()))
                raise receive_failure(exc, awaiting_done) from None
            queue.extend(machine.on_message(frame, time.time()))
        if installed_epoch is None:
            raise SessionFailure("incomplete", "handshake ended without a key")
        if self.initiator:
            # Both sides now hold the key (DONE received): IPsec reauthenticates.
            await self.driver.activate(installed_epoch)
            self.status.consecutive_failures = 0  # the tunnel took the key
            self._last_failure = None
            await self._check_liveness(in_handshake=True)

    async def _commit(self, machine: Any, action: CommitEpoch) -> list[Any]:
        try:
            committer = getattr(self.ctx, "committer", None)  # the daemon's
            if committer is not None:
                await committer.commit(action.peer_id, action.epoch, action.key_ids)
            else:
                self.ctx.journal.commit(action.peer_id, action.epoch, action.key_ids)
        except KeyReuseError as exc:
            self.log.error("QKD key reuse refused: %s", exc)
            return list(machine.abort(FailureReason.KEY_REUSE, time.time()))
        except StaleEpochError as exc:
            self.log.warning("stale epoch refused: %s", exc)
            return list(machine.abort(FailureReason.REPLAY, time.time()))
        except EpochRangeError as exc:
            self.log.error("epoch refused: %s", exc)
            return list(machine.abort(FailureReason.REPLAY, time.time()))
        return []

    async def _fetch_new(self, machine: Any, action: FetchQkdKeys) -> list[Any]:
        self._key_origins = {}
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and len(prefetched) == action.count:
            return self._hand_keys(machine, prefetched)
        try:
            keys = await self.ctx.keys.fetch_new(self.peer.id, self.peer.sae_id, action.count)
        except KmsError as exc:
            self.log.warning("QKD key unavailable: %s", describe_kms_error(exc))
            return list(machine.on_qkd_unavailable(describe_kms_error(exc), time.time()))
        return self._hand_keys(machine, keys)

    async def _fetch_by_id(self, machine: Any, action: FetchQkdKeysById) -> list[Any]:
        self._key_origins = {}
        try:
            keys = await self.ctx.keys.fetch_by_id(self.peer.id, self.peer.sae_id,
                                                   list(action.key_ids))
        except KmsError as exc:
            self.log.warning("QKD key unavailable: %s", describe_kms_error(exc))
            return list(machine.on_qkd_unavailable(describe_kms_error(exc), time.time()))
        return self._hand_keys(machine, keys)

    def _hand_keys(self, machine: Any, keys: Sequence[DeliveredKey]) -> list[Any]:
        """Give the machine the keys; keep only each key's origin (its key_ID_extension)."""
        self._key_origins = {k.key_id: k.extension for k in keys}
        if keys:
            self._budget.spent(time.monotonic())
            self._attempt_spent = True
        return list(machine.on_qkd_keys(keys, time.time()))

    async def _install(self, action: InstallKey, duration_s: float) -> None:
        key = action.key
        try:
            await self.driver.install_key(action.epoch, bytes(key))
        finally:
            wipe(key)
        degraded = action.degraded
        st = self.status
        st.epoch = action.epoch
        st.installed_at = time.time()
        st.installed_mono = time.monotonic()
        st.sources = list(action.sources)
        st.qkd_key_ids = list(action.key_ids)
        st.key_state = "degraded" if degraded else "ok"
        self._liveness.key_installed(st.installed_mono)
        st.key_confirmed = False
        if not self.initiator:
            st.consecutive_failures = 0  # the initiator's resets once the tunnel took it
        st.epochs_made += 1
        origins, self._key_origins = self._key_origins, {}
        self.ctx.telemetry.epoch_made(self.peer.id, action.epoch, action.suite, st.sources,
                                      st.qkd_key_ids, duration_s, degraded,
                                      qkd_key_extensions={k: origins.get(k)
                                                          for k in st.qkd_key_ids})
        self._refresh_state()
        took_ms = (time.monotonic() - self._triggered_mono) * 1e3  # trigger to installed
        self.log.info("epoch %d installed in %.1f ms (sources %s%s)", action.epoch, took_ms,
                      "+".join(st.sources), ", degraded: no QKD" if degraded else "",
                      extra={"epoch": action.epoch, "took_ms": round(took_ms, 2)})
        self._publish()
        await self._prompt_if_quiet()

    # ------------------------------------------------------------------ bookkeeping

    def _record_failure(self, failure: SessionFailure) -> None:
        st = self.status
        st.consecutive_failures += 1
        st.last_error = f"{failure.reason}: {failure.detail}"
        st.last_error_at = time.time()
        self._last_failure = f"{failure.reason}: {failure.detail}"
        self.ctx.telemetry.handshake_failed(self.peer.id, failure.reason)
        self.ctx.telemetry.epoch_failed(self.peer.id, st.epoch + 1, failure.reason, failure.detail)
        if failure.reason in ("bad_signature", "wrong_peer", "identity"):
            self.ctx.telemetry.identity_refused(self.peer.id, "handshake")
        self.log.warning("handshake failed (%s): %s", failure.reason, failure.detail)

    def _publish(self) -> None:
        st = self.status
        age = 0.0 if st.installed_mono is None else time.monotonic() - st.installed_mono
        self.ctx.telemetry.peer_state(self.peer.id, epoch=st.epoch, key_age_s=age,
                                      sources=st.sources, policy_state=st.state,
                                      last_error=st.last_error)
