"""WireGuard through the cross-platform UAPI (wireguard-go, boringtun).

The UAPI is a text protocol over the unix socket /var/run/wireguard/IFNAME.sock:
a request is ``set=1`` or ``get=1`` followed by ``key=value`` lines and an
empty line; the reply ends with ``errno=N`` and an empty line. Keys travel as
hex. Requests carrying keys are built in memory, sent, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gateway.tunnels import wireguard_common as wgc
from gateway.tunnels.base import TunnelError, TunnelHealth
from gateway.tunnels.uapi_view import UapiView, view_for
from gateway.tunnels.wireguard_common import WireGuardSettings

__all__ = ["UAPI_SOCKET_DIR", "UapiClient", "UapiDevice", "UapiPeer", "WireGuardUapiDriver"]

log = logging.getLogger(__name__)

UAPI_SOCKET_DIR = Path("/var/run/wireguard")
# A `get=1` lists every peer: about 400 bytes each, so 10,000 peers make 4 MB.
_MAX_REPLY = 64 << 20
# How old a shared `get=1` snapshot may be for a health sample, and for the
# "is the peer still there" check before a key install (uapi_view).
HEALTH_MAX_AGE_S = 2.0
INSTALL_MAX_AGE_S = 5.0
# ... or this long per peer the interface holds, if longer (uapi_view).
SNAPSHOT_AGE_PER_PEER_S = 1e-3
# A listing this long (about 100 peers) is parsed in a thread, off the event loop.
PARSE_IN_THREAD_LINES = 1000


@dataclass(slots=True)
class UapiPeer:
    """A peer as `get=1` reports it (its preshared key is deliberately not kept)."""

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    persistent_keepalive_s: int = 0
    last_handshake_unix: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    has_preshared_key: bool = False


@dataclass(slots=True)
class UapiDevice:
    """An interface as `get=1` reports it (its private key is not kept)."""

    listen_port: int = 0
    has_private_key: bool = False
    peers: list[UapiPeer] = field(default_factory=list)
    _index: dict[bytes, UapiPeer] | None = None

    def peer(self, public_key: bytes) -> UapiPeer | None:
        if self._index is None or len(self._index) != len(self.peers):
            self._index = {p.public_key: p for p in self.peers}  # by key: hubs list thousands
        return self._index.get(public_key)


class UapiClient:
    """One request per connection to IFNAME.sock, each bounded by `timeout_s`."""

    def __init__(
        self, ifname: str, socket_dir: Path = UAPI_SOCKET_DIR, timeout_s: float = 5.0,
    ) -> None:
        self.ifname = ifname
        self.path = socket_dir / f"{ifname}.sock"
        self.timeout_s = timeout_s

    async def _request(self, request: bytes) -> list[str]:
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    reader, writer = await asyncio.open_unix_connection(
                        str(self.path), limit=_MAX_REPLY)
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    raise TunnelError(
                        f"{self.ifname}: no UAPI socket at {self.path} "
                        "(is wireguard-go running for this interface?)"
                    ) from exc
                try:
                    writer.write(request)
                    await writer.drain()
                    raw = await reader.readuntil(b"\n\n")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as exc:
            raise TunnelError(f"{self.ifname}: UAPI did not answer in {self.timeout_s} s") from exc
        except asyncio.IncompleteReadError as exc:
            raise TunnelError(f"{self.ifname}: UAPI closed the connection mid-reply") from exc
        except asyncio.LimitOverrunError as exc:
            raise TunnelError(f"{self.ifname}: UAPI reply too long") from exc
        except OSError as exc:
            raise TunnelError(f"{self.ifname}: UAPI socket error: {exc.strerror}") from exc
        lines = raw.decode("ascii", "replace").split("\n")[:-2]
        if not lines or not lines[-1].startswith("errno="):
            raise TunnelError(f"{self.ifname}: UAPI reply without errno")
        try:
            err = int(lines[-1].removeprefix("errno="))
        except ValueError as exc:
            raise TunnelError(f"{self.ifname}: UAPI reply with a malformed errno") from exc
        if err != 0:
            op = request.split(b"\n", 1)[0].decode("ascii", "replace")
            # Only the operation and errno: the request may carry keys.
            # wireguard-go answers with negative errnos (-22 for EINVAL).
            raise TunnelError(
                f"{self.ifname}: UAPI {op} failed: errno={err} ({os.strerror(abs(err))})"
            )
        return lines[:-1]

    async def set(self, lines: Sequence[str]) -> None:
        """Send one `set=1` transaction (lines without the trailing empty line)."""
        await self._request(("set=1\n" + "".join(f"{ln}\n" for ln in lines) + "\n").encode())

    async def get(self) -> UapiDevice:
        lines = await self._request(b"get=1\n\n")
        if len(lines) < PARSE_IN_THREAD_LINES:
            return _parse_device(self.ifname, lines)
        # 10,000 peers are 100,000 lines and ~75 ms of Python: in a thread, the loop
        # gets the interpreter back every few ms instead of stalling every handshake.
        return await asyncio.to_thread(_parse_device, self.ifname, lines)


def _parse_device(ifname: str, lines: list[str]) -> UapiDevice:
    dev = UapiDevice()
    peer: UapiPeer | None = None
    hs_sec = 0
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise TunnelError(f"{ifname}: malformed UAPI line")
        try:
            if key == "public_key":
                peer = UapiPeer(public_key=bytes.fromhex(value))
                dev.peers.append(peer)
            elif peer is None:
                if key == "listen_port":
                    dev.listen_port = int(value)
                elif key == "private_key":
                    dev.has_private_key = value.strip("0") != ""
            elif key == "endpoint":
                peer.endpoint = value
            elif key == "allowed_ip":
                peer.allowed_ips.append(value)
            elif key == "persistent_keepalive_interval":
                peer.persistent_keepalive_s = int(value)
            elif key == "last_handshake_time_sec":
                hs_sec = int(value)
            elif key == "last_handshake_time_nsec":
                nsec = int(value)
                if hs_sec or nsec:
                    peer.last_handshake_unix = hs_sec + nsec / 1e9
            elif key == "rx_bytes":
                peer.rx_bytes = int(value)
            elif key == "tx_bytes":
                peer.tx_bytes = int(value)
            elif key == "preshared_key":
                peer.has_preshared_key = value.strip("0") != ""
        except ValueError as exc:
            # Name the field, never the value (it may be a key).
            raise TunnelError(f"{ifname}: malformed UAPI value for {key}") from exc
    dev.peer(b"")  # its index by key, built here (in the thread, for a long listing)
    return dev


class WireGuardUapiDriver:
    """A `TunnelDriver` for one peer of a wireguard-go (or boringtun) interface."""

    def __init__(self, settings: WireGuardSettings, socket_dir: Path = UAPI_SOCKET_DIR) -> None:
        self.settings = settings
        self.ifname = settings.interface
        self._peer_pk = wgc.decode_public_key(settings.peer_public_key)
        self._uapi = UapiClient(self.ifname, socket_dir, settings.timeout_s)
        self._view: UapiView | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_log: IO[bytes] | None = None
        self._epoch: int | None = None
        self.start_silent = False  # an HA member: no keepalive until handshake_now()

    def __repr__(self) -> str:
        return f"WireGuardUapiDriver({self.ifname!r}, manage={self.settings.manage!r})"

    # -- TunnelDriver -----------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.manage == "psk-only":
            dev = await self.view().device(*self._max_age(INSTALL_MAX_AGE_S))
            if dev.peer(self._peer_pk) is None:
                raise TunnelError(f"{self.ifname}: peer {s.peer_public_key} is not configured")
            return
        # Everything that can be checked is checked before a process exists.
        assert s.private_key_file is not None  # checked by WireGuardSettings
        private = wgc.read_private_key(s.private_key_file)
        wgc.check_not_own_key(private, self._peer_pk, self.ifname)
        lines = [f"private_key={private.hex()}"]
        if s.listen_port is not None:
            lines.append(f"listen_port={s.listen_port}")
        # An HA standby starts silent: a keepalive would be a handshake to the peer.
        lines += await self._peer_lines(endpoint=None, keepalive=0 if self.start_silent else None)
        fresh = not await self._answers()
        if fresh:
            # Fail closed: until the first epoch key arrives, no handshake can
            # complete (a zero PSK would give a classical-only tunnel). A
            # restarted daemon adopting its interface keeps the installed PSK.
            lines.append(f"preshared_key={secrets.token_hex(wgc.KEY_LEN)}")
            await self._spawn()
        try:
            await self._uapi.set(lines)
            if (await self._uapi.get()).peer(self._peer_pk) is None:
                raise TunnelError(f"{self.ifname}: wireguard-go did not accept the peer")
            await asyncio.to_thread(
                wgc.configure_interface, self.ifname, s.netns, s.addresses, s.allowed_ips
            )
        except BaseException:
            if fresh:  # leave nothing half-made behind
                await asyncio.to_thread(self._terminate)
            raise
        log.info("wireguard %s up (userspace, %s)", self.ifname, "new" if fresh else "adopted")

    async def install_key(self, epoch: int, key: bytes) -> None:
        wgc.check_key(key, "epoch key", self.ifname)
        # From the shared snapshot: a peer removed by hand within its age is missed
        # here (update_only then sets nothing) and reported by the next health sample.
        if (await self.view().device(*self._max_age(INSTALL_MAX_AGE_S))).peer(self._peer_pk) \
                is None:
            raise TunnelError(f"{self.ifname}: peer {self.settings.peer_public_key} is gone")
        # update_only: never create the peer as a side effect (psk-only mode
        # must touch nothing but the key of an existing peer).
        await self._uapi.set([
            f"public_key={self._peer_pk.hex()}",
            "update_only=true",
            f"preshared_key={key.hex()}",
        ])
        self._epoch = epoch
        log.debug("wireguard %s: epoch %d key installed", self.ifname, epoch)  # the session logs it

    async def activate(self, epoch: int) -> None:
        # The next WireGuard handshake (within 2 minutes) picks up the new PSK.
        return None

    async def block(self) -> None:
        await self._block()

    async def quiesce(self) -> None:
        """Blocked and silent (an HA standby): no keepalive, so this member never sends
        the peer a handshake that would move the peer's endpoint away from the active."""
        await self._block(keepalive=0)

    async def handshake_now(self) -> None:
        """Start a WireGuard handshake now (an HA takeover, a key on a quiet tunnel):
        turning the persistent keepalive on sends one at once, and with no session a
        keepalive is a handshake. Each step is its own set: within one, only the last
        value counts. The keepalive ends as configured (psk-only: as it was)."""
        keep = self.settings.persistent_keepalive_s or 0
        if self.settings.manage == "psk-only":
            current = (await self.view().device(*self._max_age(INSTALL_MAX_AGE_S))
                       ).peer(self._peer_pk)
            if current is None or current.endpoint is None:
                return  # no endpoint: only the peer can start it (a roaming peer)
            keep = current.persistent_keepalive_s
        elif self.settings.endpoint is None:
            return
        pk = f"public_key={self._peer_pk.hex()}"
        for interval in (0, 1, keep):
            await self._uapi.set([pk, "update_only=true",
                                  f"persistent_keepalive_interval={interval}"])

    async def _block(self, keepalive: int | None = None) -> None:
        # A random PSK alone would leave the current session keys working for
        # up to 3 minutes (REJECT_AFTER_TIME); removing the peer drops them at
        # once, and re-adding it with a random PSK keeps endpoint and allowed
        # IPs for the day a fresh key is installed on both sides.
        dev = await self.view().device(*self._max_age(INSTALL_MAX_AGE_S))
        current = dev.peer(self._peer_pk)
        if current is None and self.settings.manage == "psk-only":
            log.warning("wireguard %s: block: peer absent, nothing can flow", self.ifname)
            return
        lines = [f"public_key={self._peer_pk.hex()}", "remove=true"]
        if current is None:  # full mode: put the configured peer back
            lines += await self._peer_lines(endpoint=None, keepalive=keepalive)
        else:  # as it was (psk-only: as the operator made it)
            lines += await self._peer_lines(
                endpoint=current.endpoint, allowed=current.allowed_ips,
                keepalive=current.persistent_keepalive_s if keepalive is None else keepalive,
            )
        lines.append(f"preshared_key={secrets.token_hex(wgc.KEY_LEN)}")
        await self._uapi.set(lines)
        if self.settings.manage != "psk-only":  # psk-only: the same peers, no fresh read
            self.view().invalidate()
        self._epoch = None
        log.warning("wireguard %s blocked: peer session dropped, random PSK set", self.ifname)

    def _max_age(self, shared_s: float) -> tuple[float, float]:
        # Only an interface that peers share (psk-only: a hub's) is read from a
        # snapshot; a full-mode interface has one peer, which reads it fresh.
        if self.settings.manage == "psk-only":
            return shared_s, SNAPSHOT_AGE_PER_PEER_S
        return 0.0, 0.0

    def view(self) -> UapiView:
        if self._view is None:
            self._view = view_for(self._uapi)
        return self._view

    async def health(self) -> TunnelHealth:
        try:
            dev = await self.view().device(*self._max_age(HEALTH_MAX_AGE_S))
        except TunnelError as exc:
            return TunnelHealth(up=False, detail=str(exc))
        peer = dev.peer(self._peer_pk)
        if peer is None:
            return TunnelHealth(up=False, detail=f"{self.ifname}: peer not configured")
        if peer.last_handshake_unix is None:
            return TunnelHealth(up=False, detail=f"{self.ifname}: no handshake yet",
                                rx_bytes=peer.rx_bytes, tx_bytes=peer.tx_bytes)
        age = max(0.0, time.time() - peer.last_handshake_unix)
        # Session keys older than REJECT_AFTER_TIME carry nothing; an idle
        # tunnel without keepalive therefore reads "stale" until used again.
        up = age < wgc.REJECT_AFTER_TIME_S
        epoch = "no epoch key" if self._epoch is None else f"epoch {self._epoch}"
        detail = (f"{self.ifname}: {epoch}, last handshake {age:.0f} s ago"
                  + ("" if up else " (stale)"))
        return TunnelHealth(up=up, detail=detail, last_handshake_age_s=age,
                            rx_bytes=peer.rx_bytes, tx_bytes=peer.tx_bytes)

    async def stop(self, keep_tunnel: bool) -> None:
        if self.settings.manage != "full" or keep_tunnel:
            self._close_log()
            return
        if self._proc is not None:
            await asyncio.to_thread(self._terminate)
        else:
            # Adopted from an earlier run: deleting the TUN device ends wireguard-go.
            await asyncio.to_thread(wgc.delete_interface, self.ifname, self.settings.netns)
        self._close_log()
        log.info("wireguard %s stopped", self.ifname)

    # -- internals --------------------------------------------------------

    async def _answers(self) -> bool:
        try:
            await self._uapi.get()
        except TunnelError:
            return False
        return True

    async def _peer_lines(
        self, endpoint: str | None, allowed: Sequence[str] | None = None,
        keepalive: int | None = None,
    ) -> list[str]:
        s = self.settings
        lines = [f"public_key={self._peer_pk.hex()}"]
        if endpoint is None and s.endpoint is not None:
            ip, port = await asyncio.to_thread(wgc.resolve_endpoint, s.endpoint)
            endpoint = wgc.format_endpoint(ip, port)
        if endpoint is not None:
            lines.append(f"endpoint={endpoint}")
        if keepalive is None:
            keepalive = s.persistent_keepalive_s or 0
        lines.append(f"persistent_keepalive_interval={keepalive}")
        if allowed is None:
            # Our own configuration (manage: full): make it exactly that.
            lines.append("replace_allowed_ips=true")
            allowed = s.allowed_ips
        lines += [f"allowed_ip={a}" for a in allowed]
        return lines

    async def _spawn(self) -> None:
        s = self.settings
        argv = [s.wireguard_go, self.ifname]
        if s.netns is not None:
            argv = ["ip", "netns", "exec", s.netns, *argv]
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        self._proc_log = tempfile.TemporaryFile()  # noqa: SIM115 - kept for error reports
        try:
            self._proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=self._proc_log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            raise TunnelError(
                f"{self.ifname}: cannot start {s.wireguard_go}: {exc.strerror}"
            ) from exc
        deadline = time.monotonic() + s.timeout_s
        while not await self._answers():
            if self._proc.poll() is not None:
                raise TunnelError(
                    f"{self.ifname}: {s.wireguard_go} exited {self._proc.returncode}: "
                    f"{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                await asyncio.to_thread(self._terminate)
                raise TunnelError(
                    f"{self.ifname}: no UAPI socket within {s.timeout_s} s: {self._log_tail()}"
                )
            await asyncio.sleep(0.05)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.settings.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=self.settings.timeout_s)

    def _log_tail(self) -> str:
        if self._proc_log is None:
            return ""
        self._proc_log.seek(0)
        text = self._proc_log.read()[-400:].decode("utf-8", "replace")
        return " ".join(text.split()) or "(no output)"

    def _close_log(self) -> None:
        if self._proc_log is not None and self._proc is None:
            self._proc_log.close()
            self._proc_log = None
