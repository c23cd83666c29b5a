"""The strongSwan driver's event thread: charon's SAs going down, charon going away.

A mixin of StrongSwanDriver. A second VICI session, in its own thread, follows
charon's events so that a tunnel charon drops on its own (or a charon restart)
is noticed between rotations and reported once per outage through `on_down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import vici
from vici.exception import SessionException

from gateway.tunnels.base import TunnelError

from .strongswan_settings import as_text
from .strongswan_vici import ViciSession, log

# "log" lets activate() see IKE SAs that came and went between two polls of
# list-sas (a reauthentication rejected within milliseconds); at charon's
# VICI log level (1) no key material is logged.
_EVENTS = ("ike-updown", "ike-rekey", "child-updown", "log")


class ViciEvents(ViciSession):
    """Follows charon's events for one connection (the driver sets the state)."""

    on_down: Callable[[str], None] | None
    _loop: asyncio.AbstractEventLoop | None
    _stopping: threading.Event
    _down_reported: bool
    _charon_lost: str | None
    _active_epoch: int | None
    _events_sock: socket.socket | None
    _seen_ids: set[str]
    _seen_lock: threading.Lock

    def _report_down(self, detail: str) -> None:
        if self._down_reported:
            return
        self._down_reported = True
        log.warning("%s: tunnel down: %s", self._name, detail)
        callback = self.on_down
        if callback is not None and self._loop is not None and not self._stopping.is_set():
            with contextlib.suppress(RuntimeError):  # loop closed
                self._loop.call_soon_threadsafe(callback, detail)

    def _follow_events(self) -> None:
        """Event thread: notice SAs going down and charon going away."""
        while not self._stopping.is_set():
            try:
                sock = self._open_socket()
                sock.settimeout(None)  # listen() sets its own per-read timeout
            except OSError:
                self._stopping.wait(0.2)
                continue
            self._events_sock = sock
            if self._charon_lost is not None:
                # charon is back (restarted): give it our connection and PPK
                # now, so that the tunnel can be brought back.
                try:
                    self._locked(lambda session: None)
                    self._charon_lost = None
                except TunnelError:
                    pass
            events = vici.Session(sock).listen(list(_EVENTS), timeout=0.5)
            try:
                for label, event in events:
                    if self._stopping.is_set():
                        break
                    if label is None or event is None:
                        continue
                    self._on_event(label.decode(), event)
            except (OSError, SessionException):
                pass
            finally:
                # Closing the generator unregisters the events, which fails
                # on a socket charon already closed.
                with contextlib.suppress(Exception):
                    events.close()
                self._events_sock = None
                with contextlib.suppress(OSError):
                    sock.close()
            if self._stopping.is_set():
                return
            self._charon_lost = "charon's VICI connection was lost (charon restarted or died)"
            self._active_epoch = None
            with self._lock:
                self._drop_session()
            self._report_down(self._charon_lost)
            self._stopping.wait(0.2)

    def _on_event(self, name: str, event: Mapping[str, Any]) -> None:
        names = self.settings.conn_names
        if name == "log":
            if as_text(event.get("ikesa-name", b"")) in names and "ikesa-uniqueid" in event:
                with self._seen_lock:
                    self._seen_ids.add(as_text(event["ikesa-uniqueid"]))
            return
        conn = next((n for n in names if n in event), None)
        if conn is None:
            return
        self._charon_lost = None
        if name == "ike-updown" and "up" in event:
            # A new IKE SA takes the PPK loaded at that moment (the responder
            # learns this way which epoch is in use).
            secret = self._secret
            self._active_epoch = secret.epoch if secret and not self._blocked else None
            self._down_reported = False
        elif name == "ike-updown" and "up" not in event:
            uid = as_text(event[conn].get("uniqueid"))
            # A rotation deletes the old SA after the new one is up: only
            # "no established SA left" is a tunnel going down.
            try:
                sas = self._locked(self._ike_sas)
            except TunnelError:
                return
            others = any(sa.state == "ESTABLISHED" and sa.uniqueid != uid for sa in sas)
            if not others and not self._blocked:
                self._report_down(f"IKE SA #{uid} deleted, no IKE SA left")
        elif name == "child-updown" and "up" not in event:
            # The peer may close the CHILD_SA alone (close_action none): the
            # IKE SA stays but no traffic flows.
            going = {
                as_text(child.get("uniqueid", b""))
                for child in (event[conn].get("child-sas") or {}).values()
            }
            try:
                sas = self._locked(self._ike_sas)
            except TunnelError:
                return
            left = any(self._good(sa) and sa.installed_children - going for sa in sas)
            if not left and not self._blocked:
                self._report_down("CHILD_SA deleted, no CHILD_SA left")
