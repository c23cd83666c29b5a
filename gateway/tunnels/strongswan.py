"""IPsec tunnel driver: strongSwan's charon over VICI, epoch keys as RFC 8784 PPKs.

One driver keys one IKEv2 connection. The epoch key is loaded as a shared
secret of type PPK under a fixed handle per tunnel and bound to the tunnel's
fixed PPK_ID, so each `install_key` atomically replaces the secret. charon
mixes a PPK in at IKE_AUTH only (an IKE rekey keeps the old one), so
`activate` makes a new IKE SA, make-before-break: with manage=full the tunnel
is loaded as two connections (CONNECTION and its twin CONNECTION-mbb, alike but
for the name); the initiator initiates the twin that carries nothing while the
old IKE SA lives, and deletes the old one once the new one's CHILD_SA is
installed. (charon's own make-before-break reauthentication sends the new
IKE_SA_INIT before it checks the new SA in, so an answer that comes back at once
is dropped and only its 1 s retransmit brings the SA up.) With ppk-only (one
swanctl connection) `activate` asks charon to reauthenticate.

The VICI session lives in strongswan_vici.py, the event thread in
strongswan_events.py, the settings and conn message in strongswan_settings.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import vici
from vici.exception import CommandException

from gateway.tunnels import xfrm_interface
from gateway.tunnels.base import TunnelError, TunnelHealth

from .strongswan_events import ViciEvents
from .strongswan_settings import (
    MAX_PPK_BYTES,
    MIN_PPK_BYTES,
    IkeSa,
    IpsecSettings,
    Secret,
)
from .strongswan_vici import conn_names, errmsg, log

__all__ = ["IpsecSettings", "StrongSwanDriver", "make_strongswan_driver"]

#: A failed reauthentication is declared only once it held this long.
_FAIL_HOLD_S = 0.1
_POLL_S = 0.005


class StrongSwanDriver(ViciEvents):
    """`TunnelDriver` for one strongSwan IKEv2 connection keyed by RFC 8784 PPKs.

    `on_down(detail)` (settable attribute) is called on the event loop that
    ran `start()` when the tunnel goes down without the driver asking for it
    (peer deleted it, DPD, charon restarted); the daemon then calls
    `activate` again (after a new `install_key`, or with the current epoch).
    """

    def __init__(
        self,
        settings: IpsecSettings,
        *,
        on_down: Callable[[str], None] | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.on_down = on_down
        self._name = f"ipsec {settings.connection}"
        self._ppk_handle = f"qsgw-ppk-{settings.connection}"
        self._psk_handle = f"qsgw-ike-{settings.connection}"
        self._lock = threading.Lock()
        self._session: vici.Session | None = None
        self._sock: socket.socket | None = None
        # Set when the command session broke: the next session reloads state.
        self._needs_reload = False
        self._secret: Secret | None = None
        # Highest epoch installed; survives block() so epochs never go back.
        self._last_epoch: int | None = None
        # The epoch whose PPK keyed the newest IKE SA (None: unknown / none).
        self._active_epoch: int | None = None
        self._blocked = False
        # One on_down per outage (an IKE SA going takes its CHILD_SAs along).
        self._down_reported = False
        self._charon_lost: str | None = None
        self._started = False
        self._stopping = threading.Event()
        self._events_thread: threading.Thread | None = None
        self._events_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # uniqueids of this connection's IKE SAs that charon logged about.
        self._seen_ids: set[str] = set()
        self._seen_lock = threading.Lock()

    def __repr__(self) -> str:
        epoch = self._secret.epoch if self._secret else None
        return f"StrongSwanDriver(connection={self.settings.connection!r}, epoch={epoch})"

    def _xfrm(self) -> xfrm_interface.XfrmInterface | None:
        s = self.settings
        if s.if_id is None or s.xfrm_name is None or s.manage != "full":
            return None
        return xfrm_interface.XfrmInterface(s.xfrm_name, s.if_id, s.xfrm_addresses,
                                            s.xfrm_routes)

    # ------------------------------------------------------------------ TunnelDriver

    async def start(self) -> None:
        """Load the connection (manage=full) or check it exists (ppk-only); follow events."""
        self._loop = asyncio.get_running_loop()
        s = self.settings

        def setup(session: vici.Session) -> None:
            if s.manage == "full":
                self._load_credentials(session)
                self._load_conns(session)
            else:
                names = conn_names(session)
                if s.connection not in names:
                    raise TunnelError(
                        f"{self._name}: manage=ppk-only but charon has no connection "
                        f"{s.connection!r} (loaded: {', '.join(sorted(names)) or 'none'})"
                    )
            # Until the first epoch key arrives the PPK_ID resolves to a random
            # secret, never to whatever an earlier run left behind.
            if self._secret is None:
                self._load_random_ppk(session)

        xfrm = self._xfrm()
        if xfrm is not None:
            await asyncio.to_thread(xfrm_interface.create, xfrm)
        await self._call(setup)
        self._started = True
        self._stopping.clear()
        self._charon_lost = None
        if self._events_thread is None:
            self._events_thread = threading.Thread(
                target=self._follow_events, name=f"vici-events-{s.connection}", daemon=True
            )
            self._events_thread.start()

    async def install_key(self, epoch: int, key: bytes) -> None:
        """Load `key` as the tunnel's PPK, atomically replacing the last one."""
        if not isinstance(epoch, int) or epoch < 0:
            raise TunnelError(f"{self._name}: epoch must be a non-negative integer")
        if not isinstance(key, bytes | bytearray | memoryview):
            raise TunnelError(f"{self._name}: key must be bytes")
        if not MIN_PPK_BYTES <= len(key) <= MAX_PPK_BYTES:
            raise TunnelError(
                f"{self._name}: PPK must be {MIN_PPK_BYTES}..{MAX_PPK_BYTES} bytes, "
                f"got {len(key)}"
            )
        if self._last_epoch is not None and epoch < self._last_epoch:
            raise TunnelError(
                f"{self._name}: epoch {epoch} is older than the installed epoch "
                f"{self._last_epoch}"
            )
        new = Secret(epoch, bytearray(key))
        try:
            await self._call(lambda session: self._load_ppk(session, new.value))
        except BaseException:
            new.wipe()
            raise
        old, self._secret = self._secret, new
        self._last_epoch = epoch
        self._blocked = False
        if old is not None:
            old.wipe()
        log.info("%s: PPK for epoch %d installed", self._name, epoch)

    async def activate(self, epoch: int) -> None:
        """Initiating side: a new IKE SA keyed with epoch's PPK replaces the old one.

        Make-before-break: the new IKE SA (new SPIs, the new PPK mixed in) and
        its CHILD_SA are installed before the old one is deleted. With no IKE SA
        yet, the connection is initiated. Raises TunnelError when the new SA
        does not come up (a PPK mismatch shows as an authentication failure);
        the old one then stays.
        """
        if self._secret is None or self._secret.epoch != epoch or self._blocked:
            raise TunnelError(f"{self._name}: epoch {epoch} has not been installed")
        if not self.settings.initiator:
            # The responder's part is install_key; the initiator reauthenticates.
            return
        timeout = self.settings.timeout_s
        before = await self._call(self._ike_sas)
        old_ids = {sa.uniqueid for sa in before}
        with self._seen_lock:
            self._seen_ids.clear()
        carrying = [sa for sa in before if sa.state == "ESTABLISHED" and sa.child_installed]
        # Duplicates (both ends initiated at once, a rotation cut short) are
        # dropped first: the newest carries the traffic and is the one replaced.
        keep = carrying[-1] if carrying else None
        for other in before:
            if keep is None or other.uniqueid != keep.uniqueid:
                await self._call(functools.partial(self._terminate, uniqueid=other.uniqueid))
        if keep is not None and self.settings.manage == "full":
            # Make-before-break on the twin connection: a fresh IKE SA (initiate
            # checks it in before its first packet goes out, so no answer is
            # dropped) carries its CHILD_SA before the old one is deleted.
            fresh, old = self.settings.twin_of(keep.name), keep
            await self._call(lambda session: self._initiate(session, timeout, fresh, old))
            await self._call(functools.partial(
                self._terminate, uniqueid=keep.uniqueid, force=False))
        elif keep is not None:
            # ppk-only: the one swanctl connection is reauthenticated by charon.
            target = keep.uniqueid
            await self._call(
                lambda session: session.rekey({"ike-id": target, "reauth": "yes"})
            )
        else:
            # No traffic to keep: start over.
            await self._call(
                lambda session: self._initiate(session, timeout, self.settings.connection)
            )
        new = await self._wait_for_new_sa(old_ids, timeout)
        self._active_epoch = epoch
        self._down_reported = False
        log.info(
            "%s: epoch %d active, IKE SA #%s established with PPK",
            self._name,
            epoch,
            new.uniqueid,
        )

    def _initiate(
        self, session: vici.Session, timeout: float, conn: str, keeping: IkeSa | None = None
    ) -> None:
        """Initiate `conn`'s CHILD_SA (and a new IKE SA); returns once it is installed."""
        message = {
            "child": self.settings.child_name,
            "ike": conn,
            "timeout": str(int(timeout * 1000)),
            "init-limits": "no",
        }
        try:
            # The generator streams charon's control log; draining it runs the
            # command. The log lines are not kept (only control level).
            for _ in session.initiate(message):
                pass
        except CommandException as exc:
            if keeping is not None:
                raise TunnelError(
                    f"{self._name}: reauthentication failed: the new IKE SA was rejected "
                    f"({errmsg(exc)}: a PPK mismatch with the peer, or the peer refused); "
                    f"the previous IKE SA #{keeping.uniqueid} stays up"
                ) from None
            raise TunnelError(
                f"{self._name}: initiating failed ({errmsg(exc)}); "
                f"{self._diagnose(session)}"
            ) from None

    def _diagnose(self, session: vici.Session) -> str:
        """What charon's SAs say about a connection that did not come up, in words
        that point at the cause (never a guess stated as fact)."""
        try:
            sas = self._ike_sas(session)
        except (CommandException, OSError):
            sas = []
        peer = ", ".join(self.settings.remote_addrs) or "the peer"
        if any(sa.state == "ESTABLISHED" and not sa.child_installed for sa in sas):
            return ("the IKE SA is up but no CHILD_SA was installed: the ESP proposals do not "
                    "match, or charon lacks a plugin for them (openssl, gcm: run `qsgw doctor`)")
        if any(sa.state == "ESTABLISHED" and not sa.ppk for sa in sas):
            return "the IKE SA came up without a PPK: the peer does not use the PPK (ppk_id)"
        return (f"no IKE SA came up: {peer} did not answer on UDP 500/4500 (unreachable or "
                "filtered), or refused the authentication (a PSK or PPK mismatch); the peer's "
                "charon log says which")

    async def _wait_for_new_sa(self, old_ids: set[str], timeout: float) -> IkeSa:
        deadline = time.monotonic() + timeout
        seen_new: set[str] = set()
        gone_since: float | None = None
        while True:
            sas = await self._call(self._ike_sas)
            fresh = [sa for sa in sas if sa.uniqueid not in old_ids]
            seen_new.update(sa.uniqueid for sa in fresh)
            with self._seen_lock:
                seen_new.update(self._seen_ids - old_ids)
            good = [sa for sa in fresh if self._good(sa) and sa.child_installed]
            old_left = [sa for sa in sas if sa.uniqueid in old_ids]
            if good and not old_left:
                return good[-1]
            # An SA may be logged about a moment before list-sas shows it:
            # "came and went" must hold for a while before it counts.
            now = time.monotonic()
            if not (seen_new and not fresh):
                gone_since = None
            elif gone_since is None:
                gone_since = now
            if gone_since is not None and now - gone_since >= _FAIL_HOLD_S:
                # The new IKE SA came and went without being established.
                kept = "the previous IKE SA stays up" if old_left else "no IKE SA is left"
                raise TunnelError(
                    f"{self._name}: reauthentication failed: the new IKE SA was "
                    f"rejected (PPK mismatch with the peer, or the peer refused); {kept}"
                )
            if now >= deadline:
                if good:
                    raise TunnelError(
                        f"{self._name}: new IKE SA established but the old one "
                        f"was not deleted within {timeout:.1f} s"
                    )
                raise TunnelError(
                    f"{self._name}: no IKE SA with the new PPK within {timeout:.1f} s"
                )
            await asyncio.sleep(_POLL_S)

    async def block(self) -> None:
        """Replace the PPK with a random one and tear down the IKE SAs."""
        self._blocked = True
        if self._secret is not None:
            self._secret.wipe()
            self._secret = None

        def do_block(session: vici.Session) -> None:
            self._load_random_ppk(session)
            self._terminate_all(session)

        await self._call(do_block)
        log.warning("%s: blocked (no fresh key): SAs terminated, PPK replaced", self._name)

    async def health(self) -> TunnelHealth:
        try:
            sas = await self._call(self._ike_sas)
        except TunnelError as exc:
            return TunnelHealth(up=False, detail=str(exc))
        if self._blocked:
            return TunnelHealth(up=False, detail="blocked: no fresh key (policy required)")
        good = [sa for sa in sas if self._good(sa) and sa.child_installed]
        if not good:
            states = ", ".join(sorted({sa.state for sa in sas})) or "none"
            detail = f"no established IKE SA with PPK and installed CHILD_SA (IKE SAs: {states})"
            if self._charon_lost:
                detail = f"{detail}; {self._charon_lost}"
            return TunnelHealth(up=False, detail=detail)
        sa = good[-1]
        installed = self._secret.epoch if self._secret else None
        active = "unknown" if self._active_epoch is None else str(self._active_epoch)
        return TunnelHealth(
            up=True,
            detail=(
                f"IKE SA #{sa.uniqueid} established with PPK of epoch {active} "
                f"(installed: epoch {installed})"
            ),
            last_handshake_age_s=sa.established_s,
            rx_bytes=sum(s.bytes_in for s in good),
            tx_bytes=sum(s.bytes_out for s in good),
        )

    async def stop(self, keep_tunnel: bool) -> None:
        """Stop following events; without keep_tunnel, remove what start() loaded."""
        self._stopping.set()
        if self._events_sock is not None:
            with contextlib.suppress(OSError):
                self._events_sock.shutdown(socket.SHUT_RDWR)
        thread, self._events_thread = self._events_thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        if not keep_tunnel:
            s = self.settings

            def teardown(session: vici.Session) -> None:
                if s.manage == "full":
                    self._terminate_all(session)
                    for name in s.conn_names:
                        with contextlib.suppress(CommandException):
                            session.unload_conn({"name": name})
                    if s.psk_file is not None:
                        with contextlib.suppress(CommandException):
                            session.unload_shared({"id": self._psk_handle})
                with contextlib.suppress(CommandException):
                    session.unload_shared({"id": self._ppk_handle})

            with contextlib.suppress(TunnelError):
                await self._call(teardown)
            xfrm = self._xfrm()
            if xfrm is not None:
                with contextlib.suppress(TunnelError):
                    await asyncio.to_thread(xfrm_interface.delete, xfrm)
        if self._secret is not None:
            self._secret.wipe()
            self._secret = None
        self._started = False
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            self._sock = None
            self._session = None


def make_strongswan_driver(
    tunnel: Any,
    *,
    initiator: bool,
    on_down: Callable[[str], None] | None = None,
) -> StrongSwanDriver:
    """The driver for a config `IpsecTunnel`; `initiator` comes from the peer's role."""
    return StrongSwanDriver(IpsecSettings.from_config(tunnel, initiator=initiator), on_down=on_down)
