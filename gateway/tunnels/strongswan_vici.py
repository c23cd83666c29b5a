"""The strongSwan driver's VICI session: one socket under a lock, reconnect and reload.

A mixin of StrongSwanDriver. The `vici` package is synchronous: commands run in a
worker thread (`_call`) under a lock on one session; when the socket breaks
(charon restarted or died) the session is reopened once and the connection and
current PPK are loaded into the new charon before the command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import vici
from vici.exception import CommandException, SessionException

from gateway.tunnels.base import TunnelError

from .strongswan_settings import (
    MIN_PPK_BYTES,
    IkeSa,
    IpsecSettings,
    Secret,
    as_text,
    conn_message,
    psk_owners,
    read_secret_file,
)

# The driver's logger: its lines keep their name.
log = logging.getLogger("gateway.tunnels.strongswan")

T = TypeVar("T")


class ViciSession:
    """The command session to charon and what it loads (the driver sets the state)."""

    settings: IpsecSettings
    _name: str
    _ppk_handle: str
    _psk_handle: str
    _lock: threading.Lock
    _session: vici.Session | None
    _sock: socket.socket | None
    _needs_reload: bool
    _started: bool
    _secret: Secret | None
    _blocked: bool

    def _open_socket(self) -> socket.socket:
        family, address = self.settings.vici_address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def _connect(self) -> tuple[socket.socket, vici.Session]:
        try:
            sock = self._open_socket()
            # Bounded: a hung charon must not hang the daemon. initiate and
            # terminate wait for the peer within their own, shorter timeout.
            sock.settimeout(self.settings.timeout_s + 5.0)
        except OSError as exc:
            raise TunnelError(
                f"{self._name}: charon's VICI socket {self.settings.vici_socket} "
                f"unreachable: {exc.strerror or exc}"
            ) from None
        return sock, vici.Session(sock)

    def _drop_session(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._session = None
        self._needs_reload = True

    def _locked(self, fn: Callable[[vici.Session], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                if self._session is None:
                    self._sock, self._session = self._connect()
                    if self._needs_reload and self._started:
                        try:
                            self._reload_state(self._session)
                        except (OSError, SessionException):
                            self._drop_session()
                            if attempt == 2:
                                raise TunnelError(
                                    f"{self._name}: lost charon while reloading"
                                ) from None
                            continue
                        except (CommandException, TunnelError) as exc:
                            # Keep _needs_reload: the next call tries again.
                            self._drop_session()
                            text = errmsg(exc) if isinstance(exc, CommandException) else exc
                            raise TunnelError(
                                f"{self._name}: reloading into restarted charon failed: {text}"
                            ) from None
                    self._needs_reload = False
                try:
                    return fn(self._session)
                except (OSError, SessionException) as exc:
                    # The socket broke: charon restarted or died. Reconnect once,
                    # reloading the connection and PPK into the new charon.
                    self._drop_session()
                    if attempt == 2:
                        raise TunnelError(
                            f"{self._name}: VICI session to charon failed: "
                            f"{type(exc).__name__}"
                        ) from None
                except CommandException as exc:
                    raise TunnelError(f"{self._name}: charon refused: {errmsg(exc)}") from None
            raise AssertionError("unreachable")

    async def _call(self, fn: Callable[[vici.Session], T]) -> T:
        return await asyncio.to_thread(self._locked, fn)

    # ------------------------------------------------------------------ charon state

    def _load_credentials(self, session: vici.Session) -> None:
        s = self.settings
        if s.psk_file is not None:
            psk = bytearray(read_secret_file(s.psk_file, "psk_file", s.connection))
            try:
                session.load_shared(
                    {
                        "id": self._psk_handle,
                        "type": "IKE",
                        "data": bytes(psk),
                        "owners": psk_owners(self.settings),
                    }
                )
            finally:
                psk[:] = bytes(len(psk))
            return
        assert s.cert_file is not None and s.key_file is not None and s.ca_file is not None
        for path, kind in ((s.cert_file, "cert_file"), (s.ca_file, "ca_file")):
            data = read_secret_file(path, kind, s.connection)
            flag = "CA" if kind == "ca_file" else None
            message: dict[str, Any] = {"type": "X509", "data": data}
            if flag:
                message["flag"] = flag
            session.load_cert(message)
        key = read_secret_file(s.key_file, "key_file", s.connection)
        session.load_key({"type": "any", "data": key})

    def _load_ppk(self, session: vici.Session, value: bytes | bytearray) -> None:
        session.load_shared(
            {
                "id": self._ppk_handle,
                "type": "PPK",
                "data": bytes(value),
                "owners": [self.settings.ppk_id],
            }
        )

    def _load_random_ppk(self, session: vici.Session) -> None:
        # Nothing that could bring the tunnel back remains: a fresh random PPK
        # that no peer has replaces the last epoch key.
        self._load_ppk(session, secrets.token_bytes(MIN_PPK_BYTES))

    def _reload_state(self, session: vici.Session) -> None:
        """Put the driver's config and current PPK into a (restarted) charon."""
        if self.settings.manage == "full":
            self._load_credentials(session)
            self._load_conns(session)
        if self._secret is not None and not self._blocked:
            self._load_ppk(session, self._secret.value)
        else:
            self._load_random_ppk(session)

    def _load_conns(self, session: vici.Session) -> None:
        for name in self.settings.conn_names:
            session.load_conn(conn_message(self.settings, name))

    def _ike_sas(self, session: vici.Session) -> list[IkeSa]:
        """The IKE SAs of this tunnel's connections, oldest first."""
        found: list[IkeSa] = []
        for conn in self.settings.conn_names:
            for entry in session.list_sas({"ike": conn}):
                for name, sa in entry.items():
                    if as_text(name) == conn:
                        found.append(IkeSa.parse(sa, conn))
        # uniqueids grow: the newest SA is the last, whichever connection it is on.
        found.sort(key=lambda sa: int(sa.uniqueid) if sa.uniqueid.isdigit() else 0)
        return found

    def _good(self, sa: IkeSa) -> bool:
        return sa.state == "ESTABLISHED" and (sa.ppk or not self.settings.ppk_required)

    def _terminate(self, session: vici.Session, uniqueid: str, force: bool = True) -> None:
        # Returns at once (timeout -1). force: destroyed without waiting for the
        # peer's answer to the DELETE; else the SA (and its CHILD_SAs, which may
        # still carry packets in flight) lives until the peer answers.
        message = {"ike-id": uniqueid, "force": "yes" if force else "no", "timeout": "-1"}
        with contextlib.suppress(CommandException):
            for _ in session.terminate(message):
                pass

    def _terminate_all(self, session: vici.Session) -> None:
        for sa in self._ike_sas(session):
            self._terminate(session, sa.uniqueid)


def errmsg(exc: CommandException) -> str:
    # The vici package puts charon's errmsg in the text; charon's messages
    # name connections and states, never secrets.
    text = str(exc)
    return text.removeprefix("Command failed: ") or "unknown error"


def conn_names(session: vici.Session) -> set[str]:
    reply = session.get_conns()
    conns: Iterable[Any] = reply.get("conns", [])
    return {as_text(c) for c in conns}
