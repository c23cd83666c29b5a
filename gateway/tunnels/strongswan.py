"""IPsec tunnel driver: strongSwan's charon over VICI, epoch keys as RFC 8784 PPKs.

One driver keys one IKEv2 connection. The epoch key is loaded as a shared
secret of type PPK under a fixed handle per tunnel and bound to the tunnel's
fixed PPK_ID, so each `install_key` atomically replaces the secret. charon
mixes a PPK in at IKE_AUTH only (an IKE rekey keeps the old one), so
`activate` reauthenticates make-before-break (`rekey` with `reauth`, with
`charon.make_before_break = yes`): a new IKE SA with the new PPK comes up
before the old one is deleted.

The `vici` package is synchronous: commands run in a worker thread under a
lock on one session; a second session in its own thread follows charon's
events so that a tunnel charon drops on its own (or a charon restart) is
noticed between rotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import vici
from vici.exception import CommandException, SessionException

from gateway.tunnels.base import TunnelError, TunnelHealth

__all__ = ["IpsecSettings", "StrongSwanDriver", "make_strongswan_driver"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Manage = Literal["full", "ppk-only"]
StartAction = Literal["none", "trap", "start"]

#: RFC 8784 asks for PPKs with at least 256 bits of entropy.
MIN_PPK_BYTES = 32
MAX_PPK_BYTES = 1024
# "log" lets activate() see IKE SAs that came and went between two polls of
# list-sas (a reauthentication rejected within milliseconds); at charon's
# VICI log level (1) no key material is logged.
_EVENTS = ("ike-updown", "ike-rekey", "child-updown", "log")
#: A failed reauthentication is declared only once it held this long.
_FAIL_HOLD_S = 0.1
_POLL_S = 0.005
_DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-x25519",)
_DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)


@dataclass(frozen=True, slots=True)
class IpsecSettings:
    """What the driver needs to know about one IKEv2 tunnel.

    `connection` is the VICI connection name (and of its one CHILD_SA unless
    `child` is set). `manage="ppk-only"` leaves the connection to swanctl.conf
    and only rotates the PPK. IKE authentication is either a PSK read from
    `psk_file` or X.509 (`cert_file`, `key_file`, `ca_file`).
    """

    #: A path, or a URI as in the config: unix:///path or tcp://host:port.
    vici_socket: Path | str
    connection: str
    ppk_id: str
    manage: Manage = "full"
    child: str | None = None
    local_addrs: tuple[str, ...] = ()
    remote_addrs: tuple[str, ...] = ()
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    ike_proposals: tuple[str, ...] = _DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = _DEFAULT_ESP_PROPOSALS
    local_id: str | None = None
    remote_id: str | None = None
    psk_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    ppk_required: bool = True
    initiator: bool = True
    start_action: StartAction = "none"
    #: Bound on one VICI operation that waits for the peer (initiate, reauth).
    timeout_s: float = 10.0

    @property
    def child_name(self) -> str:
        return self.child or self.connection

    def vici_address(self) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
        """The socket family and address of charon's VICI endpoint."""
        value = str(self.vici_socket)
        if value.startswith("tcp://"):
            host, _, port = value.removeprefix("tcp://").rpartition(":")
            if not host or not port.isdigit():
                raise TunnelError(f"ipsec {self.connection}: bad VICI URI {value!r}")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
        return socket.AF_UNIX, value.removeprefix("unix://")

    def validate(self) -> None:
        """Raise TunnelError for settings charon would refuse or misuse."""
        if not self.connection or not self.ppk_id:
            raise TunnelError("ipsec: connection and ppk_id must not be empty")
        if self.manage not in ("full", "ppk-only"):
            raise TunnelError(f"ipsec {self.connection}: manage must be 'full' or 'ppk-only'")
        if self.timeout_s <= 0:
            raise TunnelError(f"ipsec {self.connection}: timeout_s must be positive")
        self.vici_address()
        if self.manage == "ppk-only":
            return
        missing = [
            name
            for name in ("local_addrs", "remote_addrs", "local_ts", "remote_ts", "ike_proposals")
            if not getattr(self, name)
        ]
        if missing:
            raise TunnelError(
                f"ipsec {self.connection}: manage=full needs {', '.join(missing)}"
            )
        cert_parts = (self.cert_file, self.key_file, self.ca_file)
        if self.psk_file is not None:
            if any(p is not None for p in cert_parts):
                raise TunnelError(
                    f"ipsec {self.connection}: give either psk_file or cert_file/key_file/ca_file"
                )
        elif not all(p is not None for p in cert_parts):
            raise TunnelError(
                f"ipsec {self.connection}: manage=full needs psk_file or "
                "cert_file, key_file and ca_file"
            )

    @classmethod
    def from_config(cls, model: Any, *, initiator: bool | None = None) -> IpsecSettings:
        """Build from the config's `IpsecTunnel` model (or anything with those attributes)."""

        def get(name: str, default: Any = None) -> Any:
            return getattr(model, name, default)

        def paths(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value is not None else None

        def strs(name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
            value = get(name)
            if value is None:
                return default
            if isinstance(value, str):
                return (value,)
            return tuple(str(v) for v in value)

        auth = get("auth")
        src = auth if auth is not None else model

        def auth_get(name: str) -> Any:
            return getattr(src, name, None) if auth is not None else get(name)

        def auth_path(name: str) -> Path | None:
            value = auth_get(name)
            return Path(value) if value is not None else None

        return cls(
            vici_socket=str(get("vici_socket", "unix:///var/run/charon.vici")),
            connection=str(get("connection")),
            ppk_id=str(get("ppk_id")),
            manage=get("manage", "full"),
            child=get("child"),
            local_addrs=strs("local_addrs"),
            remote_addrs=strs("remote_addrs"),
            local_ts=strs("local_ts"),
            remote_ts=strs("remote_ts"),
            ike_proposals=strs("ike_proposals", _DEFAULT_IKE_PROPOSALS),
            esp_proposals=strs("esp_proposals", _DEFAULT_ESP_PROPOSALS),
            local_id=auth_get("local_id") or get("local_id"),
            remote_id=auth_get("remote_id") or get("remote_id"),
            psk_file=auth_path("psk_file"),
            cert_file=auth_path("cert_file"),
            key_file=auth_path("key_file"),
            ca_file=auth_path("ca_file"),
            ppk_required=bool(get("ppk_required", True)),
            initiator=bool(get("initiator", True)) if initiator is None else initiator,
            start_action=get("start_action", "none") or "none",
        )


@dataclass(slots=True)
class _IkeSa:
    """The part of a list-sas entry the driver looks at (no keys in there)."""

    uniqueid: str
    state: str
    ppk: bool
    spis: tuple[str, str]
    established_s: float | None
    child_installed: bool
    #: uniqueids of the INSTALLED CHILD_SAs.
    installed_children: frozenset[str]
    bytes_in: int
    bytes_out: int

    @classmethod
    def parse(cls, sa: Mapping[str, Any]) -> _IkeSa:
        def text(key: str, default: str = "") -> str:
            value = sa.get(key)
            return value.decode() if isinstance(value, bytes) else default

        children: Mapping[str, Any] = sa.get("child-sas") or {}
        installed = False
        installed_ids: set[str] = set()
        bytes_in = bytes_out = 0
        for child in children.values():
            if child.get("state") == b"INSTALLED":
                installed = True
                installed_ids.add(_text(child.get("uniqueid", b"")))
            bytes_in += int(child.get("bytes-in", b"0"))
            bytes_out += int(child.get("bytes-out", b"0"))
        established = text("established")
        return cls(
            uniqueid=text("uniqueid"),
            state=text("state"),
            ppk=text("ppk") == "yes",
            spis=(text("initiator-spi"), text("responder-spi")),
            established_s=float(established) if established else None,
            child_installed=installed,
            installed_children=frozenset(installed_ids),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )


@dataclass(slots=True)
class _Secret:
    """The current PPK, kept to reload it into a restarted charon."""

    epoch: int
    value: bytearray = field(repr=False)

    def wipe(self) -> None:
        for i in range(len(self.value)):
            self.value[i] = 0


def _read_secret_file(path: Path, what: str, conn: str) -> bytes:
    """File contents; errors name the file, never its contents."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TunnelError(f"ipsec {conn}: cannot read {what} {path}: {exc.strerror}") from None
    data = data.strip()
    if not data:
        raise TunnelError(f"ipsec {conn}: {what} {path} is empty")
    return data


class StrongSwanDriver:
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
        self._secret: _Secret | None = None
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

    # ------------------------------------------------------------------ VICI plumbing

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
                            text = _errmsg(exc) if isinstance(exc, CommandException) else exc
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
                    raise TunnelError(f"{self._name}: charon refused: {_errmsg(exc)}") from None
            raise AssertionError("unreachable")

    async def _call(self, fn: Callable[[vici.Session], T]) -> T:
        return await asyncio.to_thread(self._locked, fn)

    # ------------------------------------------------------------------ charon state

    def _conn_message(self) -> dict[str, Any]:
        s = self.settings
        if s.psk_file is not None:
            local: dict[str, Any] = {"auth": "psk"}
            remote: dict[str, Any] = {"auth": "psk"}
            if s.local_id:
                local["id"] = s.local_id
            if s.remote_id:
                remote["id"] = s.remote_id
        else:
            assert s.cert_file is not None and s.ca_file is not None
            # VICI takes the certificates themselves (PEM or DER), not paths.
            cert = _read_secret_file(s.cert_file, "cert_file", s.connection)
            ca = _read_secret_file(s.ca_file, "ca_file", s.connection)
            local = {"auth": "pubkey", "certs": [cert]}
            remote = {"auth": "pubkey", "cacerts": [ca]}
            if s.local_id:
                local["id"] = s.local_id
            if s.remote_id:
                remote["id"] = s.remote_id
        child: dict[str, Any] = {
            "local_ts": list(s.local_ts),
            "remote_ts": list(s.remote_ts),
            "esp_proposals": list(s.esp_proposals),
            "start_action": s.start_action,
            # The peer deleting the CHILD_SA is reported, not silently redone:
            # the daemon decides with a fresh key.
            "close_action": "none",
            "dpd_action": "clear",
        }
        return {
            s.connection: {
                "version": "2",
                "local_addrs": list(s.local_addrs),
                "remote_addrs": list(s.remote_addrs),
                "proposals": list(s.ike_proposals),
                "ppk_id": s.ppk_id,
                "ppk_required": "yes" if s.ppk_required else "no",
                # Rotation is qsgw's job: charon's own reauth timer is off and
                # IKE rekeys (which keep the PPK) are rare.
                "reauth_time": "0",
                "rekey_time": "4h",
                "dpd_delay": "10s",
                "unique": "no",
                "local": local,
                "remote": remote,
                "children": {s.child_name: child},
            }
        }

    def _load_credentials(self, session: vici.Session) -> None:
        s = self.settings
        if s.psk_file is not None:
            psk = bytearray(_read_secret_file(s.psk_file, "psk_file", s.connection))
            try:
                session.load_shared(
                    {
                        "id": self._psk_handle,
                        "type": "IKE",
                        "data": bytes(psk),
                        "owners": self._psk_owners(),
                    }
                )
            finally:
                psk[:] = bytes(len(psk))
            return
        assert s.cert_file is not None and s.key_file is not None and s.ca_file is not None
        for path, kind in ((s.cert_file, "cert_file"), (s.ca_file, "ca_file")):
            data = _read_secret_file(path, kind, s.connection)
            flag = "CA" if kind == "ca_file" else None
            message: dict[str, Any] = {"type": "X509", "data": data}
            if flag:
                message["flag"] = flag
            session.load_cert(message)
        key = _read_secret_file(s.key_file, "key_file", s.connection)
        session.load_key({"type": "any", "data": key})

    def _psk_owners(self) -> list[str]:
        # Without configured IDs charon identifies both ends by IP address;
        # the PSK is bound to those so that it serves this tunnel only.
        s = self.settings
        local = [s.local_id] if s.local_id else [a for a in s.local_addrs if _concrete(a)]
        remote = [s.remote_id] if s.remote_id else [a for a in s.remote_addrs if _concrete(a)]
        return [*local, *remote]

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
            session.load_conn(self._conn_message())
        if self._secret is not None and not self._blocked:
            self._load_ppk(session, self._secret.value)
        else:
            self._load_random_ppk(session)

    def _ike_sas(self, session: vici.Session) -> list[_IkeSa]:
        found: list[_IkeSa] = []
        for entry in session.list_sas({"ike": self.settings.connection}):
            for name, sa in entry.items():
                if name == self.settings.connection:
                    found.append(_IkeSa.parse(sa))
        return found

    def _good(self, sa: _IkeSa) -> bool:
        return sa.state == "ESTABLISHED" and (sa.ppk or not self.settings.ppk_required)

    # ------------------------------------------------------------------ TunnelDriver

    async def start(self) -> None:
        """Load the connection (manage=full) or check it exists (ppk-only); follow events."""
        self._loop = asyncio.get_running_loop()
        s = self.settings

        def setup(session: vici.Session) -> None:
            if s.manage == "full":
                self._load_credentials(session)
                session.load_conn(self._conn_message())
            else:
                names = _conn_names(session)
                if s.connection not in names:
                    raise TunnelError(
                        f"{self._name}: manage=ppk-only but charon has no connection "
                        f"{s.connection!r} (loaded: {', '.join(sorted(names)) or 'none'})"
                    )
            # Until the first epoch key arrives the PPK_ID resolves to a random
            # secret, never to whatever an earlier run left behind.
            if self._secret is None:
                self._load_random_ppk(session)

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
        new = _Secret(epoch, bytearray(key))
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
        """Initiating side: reauthenticate so that the IKE SA uses epoch's PPK.

        Make-before-break: the new IKE SA (new SPIs, the new PPK mixed in) is
        established before the old one is deleted. With no IKE SA yet, the
        connection is initiated. Raises TunnelError when the new SA does not
        come up (a PPK mismatch shows as an authentication failure).
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
        if carrying:
            target = carrying[-1].uniqueid
            # Duplicates (both ends initiated at once) are dropped first: the
            # newest carries the traffic and is the one reauthenticated.
            for other in before:
                if other.uniqueid != target:
                    await self._call(functools.partial(self._terminate, uniqueid=other.uniqueid))
            await self._call(
                lambda session: session.rekey({"ike-id": target, "reauth": "yes"})
            )
        else:
            # No traffic to keep: a reauthentication would only re-create the
            # CHILD_SAs that exist (none), so start over.
            for other in before:
                await self._call(functools.partial(self._terminate, uniqueid=other.uniqueid))
            await self._call(lambda session: self._initiate(session, timeout))
        new = await self._wait_for_new_sa(old_ids, timeout)
        self._active_epoch = epoch
        self._down_reported = False
        log.info(
            "%s: epoch %d active, IKE SA #%s established with PPK",
            self._name,
            epoch,
            new.uniqueid,
        )

    def _initiate(self, session: vici.Session, timeout: float) -> None:
        message = {
            "child": self.settings.child_name,
            "ike": self.settings.connection,
            "timeout": str(int(timeout * 1000)),
            "init-limits": "no",
        }
        try:
            # The generator streams charon's control log; draining it runs the
            # command. The log lines are not kept (only control level).
            for _ in session.initiate(message):
                pass
        except CommandException as exc:
            raise TunnelError(
                f"{self._name}: initiating failed ({_errmsg(exc)}); "
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

    async def _wait_for_new_sa(self, old_ids: set[str], timeout: float) -> _IkeSa:
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

    def _terminate(self, session: vici.Session, uniqueid: str) -> None:
        # force: do not wait for the peer's answer to the DELETE.
        message = {"ike-id": uniqueid, "force": "yes", "timeout": "-1"}
        with contextlib.suppress(CommandException):
            for _ in session.terminate(message):
                pass

    def _terminate_all(self, session: vici.Session) -> None:
        for sa in self._ike_sas(session):
            self._terminate(session, sa.uniqueid)

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
                    with contextlib.suppress(CommandException):
                        session.unload_conn({"name": s.connection})
                    if s.psk_file is not None:
                        with contextlib.suppress(CommandException):
                            session.unload_shared({"id": self._psk_handle})
                with contextlib.suppress(CommandException):
                    session.unload_shared({"id": self._ppk_handle})

            with contextlib.suppress(TunnelError):
                await self._call(teardown)
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

    # ------------------------------------------------------------------ events

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
        conn = self.settings.connection
        if name == "log":
            if _text(event.get("ikesa-name", b"")) == conn and "ikesa-uniqueid" in event:
                with self._seen_lock:
                    self._seen_ids.add(_text(event["ikesa-uniqueid"]))
            return
        if conn not in event:
            return
        self._charon_lost = None
        if name == "ike-updown" and "up" in event:
            # A new IKE SA takes the PPK loaded at that moment (the responder
            # learns this way which epoch is in use).
            secret = self._secret
            self._active_epoch = secret.epoch if secret and not self._blocked else None
            self._down_reported = False
        elif name == "ike-updown" and "up" not in event:
            uid = _text(event[conn].get("uniqueid"))
            # Reauthentication deletes the old SA after the new one is up:
            # only "no established SA left" is a tunnel going down.
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
                _text(child.get("uniqueid", b""))
                for child in (event[conn].get("child-sas") or {}).values()
            }
            try:
                sas = self._locked(self._ike_sas)
            except TunnelError:
                return
            left = any(self._good(sa) and sa.installed_children - going for sa in sas)
            if not left and not self._blocked:
                self._report_down("CHILD_SA deleted, no CHILD_SA left")


def _concrete(addr: str) -> bool:
    """An IP address (charon's default identity), not %any, a range or a name."""
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _errmsg(exc: CommandException) -> str:
    # The vici package puts charon's errmsg in the text; charon's messages
    # name connections and states, never secrets.
    text = str(exc)
    return text.removeprefix("Command failed: ") or "unknown error"


def _conn_names(session: vici.Session) -> set[str]:
    reply = session.get_conns()
    conns: Iterable[Any] = reply.get("conns", [])
    return {_text(c) for c in conns}


def make_strongswan_driver(
    tunnel: Any,
    *,
    initiator: bool,
    on_down: Callable[[str], None] | None = None,
) -> StrongSwanDriver:
    """The driver for a config `IpsecTunnel`; `initiator` comes from the peer's role."""
    return StrongSwanDriver(IpsecSettings.from_config(tunnel, initiator=initiator), on_down=on_down)
