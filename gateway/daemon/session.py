"""One peer's session: drives the handshake state machine, installs keys, applies policy.

The initiating side rekeys on the interval and retries failures with exponential
backoff and jitter; the responding side answers INITs dispatched by the control
server. Both watch the key's lifetime: under `required`, a key that expires with
no fresh one behind it blocks the tunnel (fail closed); under `preferred`/`off`
the tunnel keeps its last key and the state says it is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    InstallKey,
    Rejected,
    ResponderHandshake,
    SendMessage,
)
from gateway.journal import EpochRangeError, JournalError, KeyReuseError, StaleEpochError
from gateway.telemetry.logs import bind_peer, peer_logger
from gateway.tunnels.base import TunnelDriver, TunnelError, TunnelHealth
from kms_client import KmeKeyNotFound, KmeUnavailable, KmsError

from .context import DaemonContext
from .framing import FrameError, read_frame, write_frame
from .keysupply import DeliveredKey
from .liveness import DOWN, PENDING, Liveness

log = logging.getLogger("qsgw.session")

HANDSHAKE_TIMEOUT_S = 30.0
# Keys are plentiful while the link's pool holds at least this many epochs' worth.
# Below it (a shared MDI hub run short, a satellite link between passes) a key
# held back for our next epoch is a key another tunnel is waiting for: no
# prefetch, and rekeys are spaced out (see PeerSession._rekey_interval).
PREFETCH_RESERVE_EPOCHS = 8
IO_TIMEOUT_S = 10.0
# How often the data plane is asked whether the tunnel carries traffic.
LIVENESS_POLL_S = 2.0
# A failing tunnel never spends QKD keys faster than a healthy one: at most this
# window's worth of epochs at the rekey interval (plus one) in any such window.
KEY_BUDGET_WINDOW_S = 3600.0


class SessionFailure(Exception):
    """A handshake attempt failed; `reason` is a short stable word for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class PeerStatus:
    """What `qsgw status` and telemetry show for one peer (no key material)."""

    peer_id: str
    role: str
    policy: str
    # What is shown: starting | pending | ok | degraded | stale | down | blocked.
    # `ok` (and degraded, stale) only while the tunnel is live; `pending` while a
    # fresh key waits for the data plane, `down` past the liveness bound.
    state: str = "starting"
    # The key's own state, from the policy: starting | ok | degraded | stale | blocked.
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


class _Channel:
    """One TCP connection carrying one handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame: int) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame

    async def send(self, data: bytes) -> None:
        await write_frame(self.writer, data, IO_TIMEOUT_S)

    async def receive(self) -> bytes:
        return await read_frame(self.reader, self.max_frame, IO_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


class _OutgoingChannel:
    """The initiator's connection, opened when INIT is ready to go: the QKD keys are
    fetched first, so an attempt that finds no key never touches the peer (whose
    control server would otherwise see a connection close without a frame)."""

    def __init__(self, peer_id: str, host: str, port: int, max_frame: int) -> None:
        self.peer_id, self.host, self.port, self.max_frame = peer_id, host, port, max_frame
        self._channel: _Channel | None = None

    async def _open(self) -> _Channel:
        if self._channel is None:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), IO_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise SessionFailure("peer_unreachable", f"control {self.host}:{self.port}: "
                                     f"{exc.__class__.__name__}") from None
            self._channel = _Channel(reader, writer, self.max_frame)
        return self._channel

    async def send(self, data: bytes) -> None:
        await (await self._open()).send(data)

    async def receive(self) -> bytes:
        try:
            return await (await self._open()).receive()
        except FrameError as exc:
            if exc.hung_up:
                # The responder hung up instead of answering: its handshake failed
                # on its side (often: no QKD key at its KME), and only it knows why.
                raise SessionFailure(
                    "peer_aborted", f"{self.peer_id} closed the handshake without an "
                    "answer; its log and `qsgw status` say why (e.g. no QKD key at its KME)",
                ) from None
            raise

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class PeerSession:
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
        self._spends: deque[float] = deque()
        self._attempt_spent = False
        self._last_failure: str | None = None  # since the last epoch the tunnel took
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
                                 len(self._spends), KEY_BUDGET_WINDOW_S, wait)
                self.status.next_rekey_mono = time.monotonic() + wait
                self._publish()
                continue
            self._attempt_spent = False
            try:
                async with self._lock:
                    await asyncio.wait_for(self._initiate_once(), HANDSHAKE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is recorded, then retried
                failure = _as_failure(exc)
                self._record_failure(failure)
                attempt = self.status.consecutive_failures
                # A failure that spent a QKD key (the tunnel did not come up) backs
                # off up to the rekey interval at least, so a broken tunnel spends
                # keys no faster than a healthy one.
                cap = max(backoff.max, self.peer.rekey_interval_s) if self._attempt_spent \
                    else backoff.max
                base = min(cap, backoff.initial * 2 ** min(attempt - 1, 30))
                if failure.reason == "qkd_unavailable":
                    self._set_scarce(True, "no QKD key for this epoch")
                    base = self._share_scarce_keys(base)
                # Full jitter in [0.5, 1.0] x base, so two gateways that failed
                # together do not retry in lockstep.
                self.status.next_rekey_mono = time.monotonic() + base * random.uniform(0.5, 1.0)
            else:
                self.status.next_rekey_mono = time.monotonic() + self._rekey_interval()
                self._start_supply_check()
            self._publish()

    def _budget_wait(self) -> float:
        """Seconds until this peer may spend another epoch's QKD keys (0: now)."""
        if self.peer.qkd == "off":
            return 0.0
        now = time.monotonic()
        while self._spends and now - self._spends[0] >= KEY_BUDGET_WINDOW_S:
            self._spends.popleft()
        self.status.qkd_keys_last_hour = len(self._spends) * self.peer.qkd_keys_per_epoch
        budget = math.ceil(KEY_BUDGET_WINDOW_S / self.peer.rekey_interval_s) + 1
        if len(self._spends) < budget:
            return 0.0
        return self._spends[0] + KEY_BUDGET_WINDOW_S - now

    def _rekey_interval(self) -> float:
        """The rekey interval, stretched to half the key lifetime while QKD keys are
        scarce: every tunnel on a short pool then asks for fewer keys, so the pool
        can go round all of them, and the other half of the lifetime is left for
        backed-off retries before the key expires."""
        if self.status.qkd_scarce:
            return max(self.peer.rekey_interval_s, self.peer.key_lifetime_s / 2)
        return self.peer.rekey_interval_s

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
        """The retry delay when the KME had no key for us: scaled by how much of our
        current key's lifetime is left. Tunnels sharing a short pool (a shared MDI
        hub, a relay hop) then ask in order of need: one whose key is about to
        expire retries at the initial backoff, one just keyed waits up to the full
        backoff, so the keys there are go to the tunnel nearest to starving."""
        installed = self.status.installed_mono
        if installed is None or self.status.key_state == "blocked":
            return min(base, self.peer.retry_backoff_s.initial)  # no usable key: most in need
        left = self.peer.key_lifetime_s - (time.monotonic() - installed)
        share = min(1.0, max(0.0, left / self.peer.key_lifetime_s))
        initial = self.peer.retry_backoff_s.initial
        return initial + (base - initial) * share if base > initial else base

    def _start_supply_check(self) -> None:
        if self.peer.qkd == "off":
            return
        if self._supply_task is not None and not self._supply_task.done():
            return
        self._supply_task = asyncio.create_task(self._check_supply(),
                                                  name=f"supply:{self.peer.id}")

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
        epoch = self.ctx.journal.last_epoch(self.peer.id) + 1
        machine = InitiatorHandshake(self._params, epoch, time.time())
        channel = _OutgoingChannel(self.peer.id, self.peer.control.host,
                                   self.peer.control.port, self.ctx.max_frame_bytes)
        try:
            actions = machine.start(time.time())
            await self._pump(machine, actions, channel)
        finally:
            await channel.close()

    # ------------------------------------------------------------------ responder

    async def handle_incoming(self, first_frame: bytes, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, control: Any = None) -> None:
        """An admitted INIT (see daemon.admission). `control` counts a refusal here."""
        bind_peer(self.peer.id)
        channel = _Channel(reader, writer, self.ctx.max_frame_bytes)
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
                                             self.ctx.journal.last_epoch(self.peer.id), time.time())
                actions = machine.on_message(first_frame, time.time())
                await asyncio.wait_for(self._pump(machine, actions, channel), HANDSHAKE_TIMEOUT_S)
            finally:
                self._lock.release()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_failure(_as_failure(exc))
            self._publish()

    # ------------------------------------------------------------------ the pump

    async def _pump(self, machine: InitiatorHandshake | ResponderHandshake,
                    actions: list[Any], channel: _Channel | _OutgoingChannel) -> None:
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
                    aborted = self._commit(machine, action)
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
            except FrameError as exc:
                queue.extend(machine.abort(FailureReason.TIMEOUT, time.time()))
                raise SessionFailure("transport", str(exc)) from None
            queue.extend(machine.on_message(frame, time.time()))
        if installed_epoch is None:
            raise SessionFailure("incomplete", "handshake ended without a key")
        if self.initiator:
            # Both sides now hold the key (DONE received): IPsec reauthenticates.
            await self.driver.activate(installed_epoch)
            self.status.consecutive_failures = 0  # the tunnel took the key
            self._last_failure = None
            await self._check_liveness()

    def _commit(self, machine: Any, action: CommitEpoch) -> list[Any]:
        try:
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
            self._note_qkd_problem(exc)
            return list(machine.on_qkd_unavailable(_describe(exc), time.time()))
        return self._hand_keys(machine, keys)

    async def _fetch_by_id(self, machine: Any, action: FetchQkdKeysById) -> list[Any]:
        self._key_origins = {}
        try:
            keys = await self.ctx.keys.fetch_by_id(self.peer.id, self.peer.sae_id,
                                                   list(action.key_ids))
        except KmsError as exc:
            self._note_qkd_problem(exc)
            return list(machine.on_qkd_unavailable(_describe(exc), time.time()))
        return self._hand_keys(machine, keys)

    def _hand_keys(self, machine: Any, keys: Sequence[DeliveredKey]) -> list[Any]:
        """Give the machine the keys; keep only each key's origin (its key_ID_extension)."""
        self._key_origins = {k.key_id: k.extension for k in keys}
        if keys:
            self._spends.append(time.monotonic())
            self._attempt_spent = True
        return list(machine.on_qkd_keys(keys, time.time()))

    def _note_qkd_problem(self, exc: Exception) -> None:
        self.log.warning("QKD key unavailable: %s", _describe(exc))

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
        self.log.info("epoch %d installed (sources %s%s)", action.epoch, "+".join(st.sources),
                      ", degraded: no QKD" if degraded else "",
                      extra={"epoch": action.epoch})
        self._publish()

    # ------------------------------------------------------------------ policy

    async def _expiry_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            st = self.status
            if st.installed_mono is None or st.key_state in ("blocked", "stale"):
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
        self.status.last_error = f"blocked: {why}"
        self.status.last_error_at = time.time()
        self.log.error("tunnel blocked (policy required): %s", why)

    # ------------------------------------------------------------------ liveness

    async def _liveness_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(LIVENESS_POLL_S)
            await self._check_liveness()

    async def _check_liveness(self) -> None:
        """Ask the data plane whether the tunnel carries traffic; `down` past the bound."""
        st = self.status
        if st.key_state in ("starting", "blocked") or self._lock.locked():
            return  # nothing to judge, or a handshake (and its activation) is under way
        try:
            health = await asyncio.wait_for(self.driver.health(), 5)
        except TimeoutError:
            health = TunnelHealth(up=False, detail="the tunnel driver did not answer within 5 s")
        except TunnelError as exc:
            health = TunnelHealth(up=False, detail=f"tunnel driver: {exc}")
        was = self._liveness.verdict.state
        verdict = self._liveness.observe(health, time.monotonic())
        st.tunnel_live, st.tunnel_detail = verdict.state, verdict.reason
        st.key_confirmed = verdict.confirmed
        st.rx_bytes, st.tx_bytes = health.rx_bytes, health.tx_bytes
        st.last_handshake_age_s = health.last_handshake_age_s
        self.ctx.telemetry.tunnel_health(self.peer.id, verdict.state == "live",
                                         health.rx_bytes, health.tx_bytes)
        if verdict.state == DOWN and was != DOWN:
            if self._last_failure is not None:
                # What the last attempt ran into is the likeliest cause: say it.
                verdict.reason = f"{verdict.reason}; last attempt: {self._last_failure}"
                st.tunnel_detail = verdict.reason
            st.tunnel_downs += 1
            st.last_tunnel_down, st.last_tunnel_down_at = verdict.reason, time.time()
            st.last_error, st.last_error_at = f"tunnel down: {verdict.reason}", time.time()
            self.log.error("tunnel down: %s", verdict.reason)
            self.ctx.telemetry.alarm("tunnel_down", self.peer.id, True, verdict.reason)
        elif was == DOWN and verdict.state != DOWN:
            self.log.info("tunnel live again: %s", verdict.reason)
            self.ctx.telemetry.alarm("tunnel_down", self.peer.id, False, verdict.reason)
        self._refresh_state()

    def _refresh_state(self) -> None:
        """The shown state: the key's state, held back to pending/down by liveness."""
        st = self.status
        shown = st.key_state
        if shown not in ("starting", "blocked"):
            live = self._liveness.verdict.state
            if live == DOWN:
                shown = "down"
            elif live == PENDING:
                shown = "pending"
        if shown != st.state:
            old, st.state = st.state, shown
            self.ctx.telemetry.policy_changed(self.peer.id, old, shown)
            self._publish()

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

    async def describe(self) -> dict[str, Any]:
        doc = self.status.as_dict(time.monotonic())
        try:
            health = await asyncio.wait_for(self.driver.health(), 2)
            doc["tunnel"] = {"up": health.up, "detail": health.detail,
                             "last_handshake_age_s": health.last_handshake_age_s}
        except (TunnelError, TimeoutError) as exc:
            doc["tunnel"] = {"up": False, "detail": str(exc), "last_handshake_age_s": None}
        return doc


def _describe(exc: Exception) -> str:
    if isinstance(exc, KmeUnavailable):
        return f"KME unavailable: {exc}"
    if isinstance(exc, KmeKeyNotFound):
        return f"QKD key not found: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _as_failure(exc: BaseException) -> SessionFailure:
    if isinstance(exc, SessionFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return SessionFailure("timeout", f"no complete handshake within {HANDSHAKE_TIMEOUT_S:g} s")
    if isinstance(exc, TunnelError):
        return SessionFailure("tunnel", str(exc))
    if isinstance(exc, KeyReuseError):
        return SessionFailure("key_reuse", str(exc))
    if isinstance(exc, JournalError):  # lost, replaced or unwritable: no epoch (fail closed)
        return SessionFailure("journal", str(exc))
    if isinstance(exc, (OSError, FrameError)):
        return SessionFailure("transport", f"{type(exc).__name__}: {exc}")
    return SessionFailure("internal", f"{type(exc).__name__}: {exc}")
