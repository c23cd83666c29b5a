"""The gateway daemon: config in, one session per peer, control and status servers.

SIGTERM stops cleanly (tunnels keep their last key unless `on_shutdown: block`);
SIGHUP reloads the config and applies the difference peer by peer, leaving the
unchanged peers untouched; SIGUSR1 rekeys every initiated peer now; under
systemd it sends READY and WATCHDOG.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.config import (
    ConfigError,
    GatewayConfig,
    PeerConfig,
    diff_peers,
    kme_dialect,
    load_config,
)
from gateway.fsguard import check_dir
from gateway.identity import LocalIdentity
from gateway.journal_api import JournalStore
from gateway.journal_guard import GuardedJournal
from gateway.telemetry import Telemetry
from gateway.telemetry.setup import build_telemetry
from kms_client import KmeClient, KmeEndpoint, SaeCredentials

from .admission import InitAdmission
from .commits import GroupCommitter, ThreadCommitter
from .context import DaemonContext
from .control import ControlServer, resolve_host
from .drivers import make_driver
from .ha import HaRole, JournalWatch, SharedJournal
from .ha_session import HaPeerSession
from .journal_setup import check_journal_at_start, open_journal
from .keysupply import KeySupply
from .looplag import LoopLag
from .ratelog import RateLimitedLog, loop_error_handler
from .sdnotify import SystemdNotifier
from .session import PeerSession
from .status import StatusServer

log = logging.getLogger("qsgw.daemon")

POOL_CHECK_INTERVAL_S = 30.0
POOL_CHECKS_PER_S = 10.0
# The journal's signed record (journal_guard) is rewritten at most this often.
JOURNAL_RECORD_EVERY_S = 1.0
# The collector's thresholds once the daemon runs. CPython's (700, 10, 10) made a
# 2,000-peer hub collect 2,000 times a minute and sweep its whole young heap (the
# frozen start aside) 15 times in two minutes, 120-330 ms each with the loop stopped:
# the loop lag's p99. Fewer, larger young collections cost less in all, and a full
# sweep comes after 100 middle ones (20 million allocations) instead of 10.
GC_THRESHOLDS = (10_000, 20, 100)
# Loop time a status document takes between two turns of the loop: by time, not a
# count of peers, because each turn given back costs a whole turn of a busy loop
# (500 peers a slice made 20 turns at 10,000 peers, a second and more under load).
STATUS_SLICE_S = 0.02


def is_initiator(gateway_id: str, peer: PeerConfig) -> bool:
    if peer.role == "initiator":
        return True
    if peer.role == "responder":
        return False
    return gateway_id < peer.id  # `auto`: the lower gateway ID initiates


class GatewayDaemon:
    def __init__(self, config_path: Path, config: GatewayConfig) -> None:
        self.config_path = config_path
        self.config = config
        self.sessions: dict[str, PeerSession] = {}
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._notifier = SystemdNotifier()
        self._control: ControlServer | None = None
        self._status: StatusServer | None = None
        self._client: KmeClient | None = None
        self._journal: JournalStore | None = None
        self._journal_watch: JournalWatch | None = None
        self.role: HaRole | None = None
        self._telemetry: Telemetry | None = None
        self._ctx: DaemonContext | None = None
        self._admission: InitAdmission | None = None
        self._allowed: set[str] = set()
        self._peer_addresses: dict[str, set[str]] = {}
        self._background: list[asyncio.Task[None]] = []
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self.loop_lag: LoopLag | None = None

    # ------------------------------------------------------------------ setup

    def _make_client(self, config: GatewayConfig) -> KmeClient:
        kme = config.kme
        endpoints = [
            KmeEndpoint(url=e.url, kme_id=e.kme_id, ca_file=Path(e.ca_file or kme.ca_file),
                        tls=(e.tls or kme.tls).options(),
                        dialect=None if e.dialect is None
                        else kme_dialect(e.dialect, kme.dialect_rules))
            for e in kme.endpoints
        ]
        creds = SaeCredentials(sae_id=kme.sae_id, cert_file=Path(kme.cert_file),
                               key_file=Path(kme.key_file))
        return KmeClient(endpoints, creds, timeout=kme.timeout_s,
                         key_ids_name_master=kme.key_ids_name_master,
                         dialect=kme_dialect(kme.dialect, kme.dialect_rules))

    async def start(self) -> None:
        cfg = self.config
        state_dir = Path(cfg.gateway.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_dir(state_dir, "state_dir")  # checked again: the config was read earlier
        check_dir(Path(cfg.gateway.identity_dir), "identity_dir")
        identity = LocalIdentity.load(Path(cfg.gateway.identity_dir))
        check_journal_at_start(cfg, identity, f" -c {self.config_path}")
        self._telemetry = build_telemetry(cfg, identity)
        telemetry = self._telemetry

        def journal_lost(detail: str) -> None:
            log.critical("%s: new epochs stop; restore it and restart the daemon", detail)
            telemetry.alarm("journal_lost", cfg.gateway.id, True, detail)

        self._journal = open_journal(cfg, identity, telemetry, journal_lost,
                                     record_every_s=JOURNAL_RECORD_EVERY_S)
        self._journal_watch = JournalWatch(self._journal, telemetry)
        await self._telemetry.start()
        self._client = self._make_client(cfg)
        keys = KeySupply(self._client, self._telemetry,
                         cfg.kme.endpoints[0].kme_id, cfg.kme.dec_keys_deadline_s)
        self._ctx = DaemonContext(cfg, identity, self._journal, keys, self._telemetry,
                                  control_source=cfg.ha.virtual_address if cfg.ha else None,
                                  # SQLite's group commit; PostgreSQL's in a thread
                                  committer=GroupCommitter(self._journal)
                                  if isinstance(self._journal, GuardedJournal)
                                  else ThreadCommitter(self._journal))
        if cfg.ha is not None:
            self.role = HaRole(cfg.ha.virtual_address, cfg.ha.member, cfg.ha.check_interval_s)
            self.role.listen(self._role_changed)
            self.role.active = self.role.probe()  # the sessions start in the right role
            telemetry.ha_role(cfg.ha.member, self.role.active, "daemon started")
        self._refresh_allowed()
        journal = self._journal
        admission = self._admission = InitAdmission(
            cfg.gateway.id, cfg.control.timestamp_window_s,
            lambda peer: self._peer_addresses.get(peer, set()), journal.last_epoch)
        self._control = ControlServer(
            cfg.control.listen.host, cfg.control.listen.port, cfg.control.max_frame_bytes,
            cfg.control.rate_limit_per_s, self.sessions.get, lambda: self._allowed,
            admission=admission, settings=cfg.control,
            on_flood=lambda active, detail: telemetry.alarm("control_flood", cfg.gateway.id,
                                                            active, detail))
        await self._control.start()
        self._background.append(asyncio.create_task(self._control_watch()))
        for peer in cfg.peers:
            await self._add_peer(peer)
        self._status = StatusServer(Path(cfg.gateway.status_socket), self.status_document)
        await self._status.start()
        self.loop_lag = LoopLag(on_sample=telemetry.loop_lag)
        self._background.append(asyncio.create_task(self.loop_lag.run()))
        self._background.append(asyncio.create_task(self._pool_watch()))
        self._background.append(asyncio.create_task(self._journal_watch.run()))
        if self.role is not None:
            self._background.append(asyncio.create_task(self.role.run()))
        if self._notifier.watchdog_interval_s:
            self._background.append(asyncio.create_task(self._watchdog()))
        # What start made lives as long as the daemon: out of the collector's sweeps,
        # which would otherwise walk thousands of sessions' objects again and again.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self._notifier.ready(f"{len(self.sessions)} peers")
        log.info("gateway %s running: %d peers, control on %s:%d", cfg.gateway.id,
                 len(self.sessions), cfg.control.listen.host, cfg.control.listen.port)

    def _refresh_allowed(self) -> None:
        allowed: set[str] = set()
        by_peer: dict[str, set[str]] = {}
        for peer in self.config.peers:
            by_peer[peer.id] = resolve_host(peer.control.host)
            allowed |= by_peer[peer.id]
        self._allowed = allowed
        self._peer_addresses = by_peer

    async def _add_peer(self, peer: PeerConfig) -> None:
        assert self._ctx is not None
        initiator = is_initiator(self.config.gateway.id, peer)
        driver = make_driver(peer, initiator)
        session = PeerSession(self._ctx, peer, driver, initiator) if self.role is None \
            else HaPeerSession(self._ctx, peer, driver, initiator, self.role)
        self.sessions[peer.id] = session
        self._ctx.peer_count = len(self.sessions)
        await session.start()

    async def stop(self) -> None:
        self._notifier.stopping()
        keep = self.config.gateway.on_shutdown == "keep"
        for task in self._background:
            task.cancel()
        if self._control is not None:
            await self._control.stop()
        for session in list(self.sessions.values()):
            await session.stop(keep_tunnel=keep)
        if self._status is not None:
            await self._status.stop()
        if self._client is not None:
            await self._client.aclose()
        if self._telemetry is not None:
            await self._telemetry.stop()
        if self._journal is not None:
            self._journal.close()
        log.info("gateway %s stopped (tunnels %s)", self.config.gateway.id,
                 "kept with their last key" if keep else "blocked")

    # ------------------------------------------------------------------ reload

    async def reload(self) -> None:
        async with self._reload_lock:  # SIGHUPs in quick succession apply one by one
            await self._reload()

    async def _reload(self) -> None:
        self._notifier.reloading()
        started = time.monotonic()
        try:
            # In a thread: a large config takes a second to validate, in which the
            # sessions go on with their handshakes.
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            self._notifier.ready("reload refused")
            return
        kept = ("gateway", "kme", "control", "journal", "ha")
        if any(getattr(new, k) != getattr(self.config, k) for k in kept):
            log.warning("reload: gateway, kme, control, journal and ha sections need a "
                        "restart; applying peer changes only")
        diff = diff_peers(self.config, new)
        self.config = new.model_copy(update={k: getattr(self.config, k) for k in kept})
        assert self._ctx is not None
        self._ctx.config = self.config
        self._refresh_allowed()
        if self._admission is not None:  # a removed peer's admitted INITs are not kept
            self._admission.forget(p.id for p in diff.removed)
        for peer in (*diff.removed, *diff.changed):
            session = self.sessions.pop(peer.id, None)
            if session is not None:
                await session.stop(keep_tunnel=False)
        for peer in (*diff.changed, *diff.added):
            await self._add_peer(peer)
        self.reloads += 1
        self._ctx.peer_count = len(self.sessions)
        gc.freeze()
        took = time.monotonic() - started
        log.info("reloaded in %.3f s: %d added, %d removed, %d changed", took, len(diff.added),
                 len(diff.removed), len(diff.changed), extra={"reload_s": round(took, 4)})
        self._notifier.ready(f"{len(self.sessions)} peers")

    # ------------------------------------------------------------------ background

    async def _control_watch(self) -> None:
        # Refusals reach telemetry as totals and one alarm, never one event each.
        assert self._control is not None and self._telemetry is not None
        while True:
            await asyncio.sleep(1.0)
            self._control.tick()
            if isinstance(self._journal, GuardedJournal):
                self._journal.check()  # a deleted journal raises its alarm without an epoch
                try:
                    self._journal.flush_record()
                except OSError as exc:
                    log.error("journal record not written: %s", exc)
            if isinstance(self._journal, SharedJournal):
                self._journal.tick()
            self._telemetry.control_stats(self._control.refused.as_dict(), len(self._control.conns))

    async def _pool_watch(self) -> None:
        # Every link's pool level once an interval, the calls spread over it, and none
        # for a link whose level an epoch's supply check read within it: 10,000 peers
        # would otherwise ask the KME 10,000 times in a burst every 30 s.
        assert self._ctx is not None
        keys = self._ctx.keys
        while True:
            started = time.monotonic()
            due = [s for s in list(self.sessions.values()) if s.peer.qkd != "off"
                   and keys.status_age(s.peer.sae_id) >= POOL_CHECK_INTERVAL_S]
            # At most POOL_CHECKS_PER_S calls: a round of 5,000 links takes minutes.
            gap = max(POOL_CHECK_INTERVAL_S / max(1, len(due)), 1.0 / POOL_CHECKS_PER_S)
            for session in due:
                if session.peer.id in self.sessions:
                    with contextlib.suppress(Exception):
                        await keys.pool_status(session.peer.sae_id)
                await asyncio.sleep(gap)
            await asyncio.sleep(max(0.0, started + POOL_CHECK_INTERVAL_S - time.monotonic()))

    async def _watchdog(self) -> None:
        assert self._notifier.watchdog_interval_s is not None
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(self._notifier.watchdog_interval_s)

    async def _role_changed(self, active: bool) -> None:
        """A takeover (or the loss of the virtual address): in the audit trail and metrics."""
        assert self.config.ha is not None and self._telemetry is not None
        if isinstance(self._journal, SharedJournal):
            self._journal.reset()
        self._telemetry.ha_role(self.config.ha.member, active,
                                f"virtual address {self.config.ha.virtual_address} "
                                f"{'taken over' if active else 'lost'}")

    def rekey_all(self) -> None:
        """SIGUSR1: every peer this gateway initiates to makes a new epoch now."""
        log.info("rekey of all initiated peers requested")
        for session in self.sessions.values():
            session.trigger_rekey()

    async def status_document(self) -> bytes:
        """The status document, encoded (keys sorted). The peers are encoded a slice
        at a time with the loop let go in between: 10,000 peers are ~8 MB of JSON, and
        one synchronous build stalled every handshake for a second."""
        head = self._status_head()
        peers: list[bytes] = []
        chunk: list[dict[str, Any]] = []
        slice_end = time.monotonic() + STATUS_SLICE_S
        for session in list(self.sessions.values()):
            now = time.monotonic()
            if now > slice_end:
                peers.append(orjson.dumps(chunk, option=orjson.OPT_SORT_KEYS)[1:-1])
                chunk = []
                await asyncio.sleep(0)
                now = time.monotonic()
                slice_end = now + STATUS_SLICE_S
            doc = {"tunnel": session.tunnel_doc()}
            doc.update(session.status.as_dict(now))
            chunk.append(doc)
        if chunk:
            peers.append(orjson.dumps(chunk, option=orjson.OPT_SORT_KEYS)[1:-1])
        head["peers"] = orjson.Fragment(b"[" + b",".join(peers) + b"]")
        return orjson.dumps(head, option=orjson.OPT_SORT_KEYS)

    def _status_head(self) -> dict[str, Any]:
        return {
            "gateway": self.config.gateway.id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "reloads": self.reloads,
            "control_refused": self._control.refused.as_dict() if self._control else {},
            "control_connections": len(self._control.conns) if self._control else 0,
            "control_flood": bool(self._control and self._control.flooded),
            "loop_lag": self.loop_lag.as_dict() if self.loop_lag is not None else None,
            "journal_lost": getattr(self._journal, "lost", None),
            "journal": self._journal_watch.as_dict() if self._journal_watch else None,
            "role": self.role.role if self.role is not None else "single",
            "ha": None if self.role is None else {
                "member": self.role.member, "virtual_address": self.role.virtual_address,
                "since": self.role.since, "takeovers": self.role.takeovers,
                "split_brain_conflicts": getattr(self._journal, "conflicts", 0)},
            "alarms": [{"alarm": a.name.value, "subject": a.subject, "severity": a.severity,
                        "detail": a.detail, "since": a.since}
                       for a in (self._telemetry.alarms.active() if self._telemetry else [])],
        }

    # ------------------------------------------------------------------ main

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_error_handler(RateLimitedLog(log)))
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGUSR1, self.rekey_all)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
