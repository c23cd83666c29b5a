"""The HA pair member's role: active while keepalived's virtual address is on this host.

qsgw follows the address itself rather than keepalived's notify hook: the
address is what the peer's packets reach, so the role can never disagree with
where the traffic goes (a notify script that failed, or came late, could). The
check is a bind() to the address, which succeeds only while it is local (and
a netlink address dump where `ip_nonlocal_bind` would make every bind succeed).

`SharedJournal` wraps the PostgreSQL journal of the pair: a commit that the
database refused because the *other* member claimed that key_ID or epoch first
means both members are active at once (split brain); it raises the
split_brain alarm, and the refusal stands (the caller aborts its handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from gateway.journal import JournalError, KeyReuseError, StaleEpochError
from gateway.journal_api import JournalStore
from gateway.telemetry import Telemetry

log = logging.getLogger("qsgw.ha")

# A split_brain alarm clears this long after the last conflicting commit.
SPLIT_BRAIN_HOLD_S = 30.0


def _nonlocal_bind(family: int) -> bool:
    name = "ipv4/ip_nonlocal_bind" if family == socket.AF_INET else "ipv6/ip_nonlocal_bind"
    try:
        return Path(f"/proc/sys/net/{name}").read_text().strip() == "1"
    except OSError:
        return False


def address_is_local(address: str) -> bool:
    """Whether `address` is on one of this namespace's interfaces (usable now)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    if _nonlocal_bind(family):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return any(a.get_attr("IFA_ADDRESS") == str(ip) or a.get_attr("IFA_LOCAL") == str(ip)
                       for a in ipr.get_addr(family=family))
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(ip), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


class HaRole:
    """This member's role, polled from the virtual address; callbacks on each change."""

    def __init__(self, virtual_address: str, member: str, interval_s: float,
                 probe: Callable[[str], bool] = address_is_local) -> None:
        self.virtual_address = virtual_address
        self.member = member
        self.interval_s = interval_s
        self._probe = probe
        self.active = False
        self.since = time.time()
        self.takeovers = 0
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[bool], Awaitable[None]]] = []

    def listen(self, callback: Callable[[bool], Awaitable[None]]) -> None:
        self._listeners.append(callback)

    def probe(self) -> bool:
        try:
            return self._probe(self.virtual_address)
        except OSError as exc:  # cannot tell: not active (never two actives by our doing)
            log.error("cannot check the virtual address %s: %s", self.virtual_address, exc)
            return False

    async def run(self) -> None:
        while True:
            now = self.probe()
            if now != self.active:
                await self._set(now)
            await asyncio.sleep(self.interval_s)

    async def _set(self, active: bool) -> None:
        self.active, self.since = active, time.time()
        if active:
            self.takeovers += 1
        log.warning("HA member %s is now %s (virtual address %s %s)", self.member,
                    "ACTIVE" if active else "standby", self.virtual_address,
                    "is here" if active else "is not here")
        for callback in list(self._listeners):
            try:
                await callback(active)
            except Exception as exc:  # one listener's failure must not stop the watch
                log.error("HA role change handler failed: %s: %s", type(exc).__name__, exc)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, active: bool) -> None:
        """Return once the role is `active` (at once when it is)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.active == active)

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"


class SharedJournal:
    """The pair's journal: a refusal caused by the other member is a split brain alarm."""

    def __init__(self, inner: JournalStore, member: str, telemetry: Telemetry,
                 gateway_id: str) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.member = member
        self._telemetry = telemetry
        self._gateway_id = gateway_id
        self.conflicts = 0
        self.last_conflict: float | None = None
        self._mine: dict[str, int] = {}  # the last epoch this member committed, per peer

    def commit(self, peer_id: str, epoch: int | None, key_ids: Iterable[str]) -> None:
        try:
            self.inner.commit(peer_id, epoch, key_ids)
        except (KeyReuseError, StaleEpochError) as exc:
            self._refused(exc)
            raise
        self._committed(peer_id, epoch)

    async def commit_async(self, peer_id: str, epoch: int | None, key_ids: list[str]) -> None:
        """commit, with the database's round trip in a thread and the alarm in the loop."""
        try:
            await asyncio.to_thread(self.inner.commit, peer_id, epoch, key_ids)
        except (KeyReuseError, StaleEpochError) as exc:
            self._refused(exc)
            raise
        self._committed(peer_id, epoch)

    def _refused(self, exc: KeyReuseError | StaleEpochError) -> None:
        if exc.member is not None and exc.member != self.member:
            self._conflict(f"member {exc.member} committed first, this commit is "
                           f"refused: {exc}")

    def _committed(self, peer_id: str, epoch: int | None) -> None:
        if epoch is not None:
            self._mine[peer_id] = epoch

    def reset(self) -> None:
        """A role change: epochs the other member makes from now on are expected."""
        self._mine.clear()

    def _conflict(self, detail: str) -> None:
        self.conflicts += 1
        self.last_conflict = time.monotonic()
        log.critical("split brain: %s", detail)
        self._telemetry.alarm("split_brain", self._gateway_id, True, detail)

    def tick(self) -> None:
        """Periodic: clear the split_brain alarm once conflicts have stopped."""
        if self.last_conflict is not None and \
                time.monotonic() - self.last_conflict >= SPLIT_BRAIN_HOLD_S:
            self.last_conflict = None
            self._telemetry.alarm("split_brain", self._gateway_id, False,
                                  f"no conflicting commit for {SPLIT_BRAIN_HOLD_S:g} s")

    def consume(self, peer_id: str, key_ids: Iterable[str], epoch: int | None = None) -> None:
        self.commit(peer_id, epoch, key_ids)

    def record_epoch(self, peer_id: str, epoch: int) -> None:
        self.commit(peer_id, epoch, ())

    def is_consumed(self, key_id: str) -> bool:
        return self.inner.is_consumed(key_id)

    def last_epoch(self, peer_id: str) -> int:
        by = getattr(self.inner, "last_epoch_by", None)
        if by is None:
            return self.inner.last_epoch(peer_id)
        return self._seen(peer_id, *by(peer_id))

    async def last_epoch_async(self, peer_id: str) -> int:
        """last_epoch, with the database's round trip in a thread and the alarm in the loop."""
        by = getattr(self.inner, "last_epoch_by", None)
        if by is None:
            return await asyncio.to_thread(self.inner.last_epoch, peer_id)
        return self._seen(peer_id, *await asyncio.to_thread(by, peer_id))

    def _seen(self, peer_id: str, epoch: int, member: str | None) -> int:
        mine = self._mine.get(peer_id)
        if mine is not None and member not in (None, self.member) and epoch > mine:
            # Since our own last epoch, while we hold the role, the other member made one.
            self._conflict(f"member {member} committed epoch {epoch} for {peer_id} after "
                           f"this member's {mine}: both members are active")
            self._mine[peer_id] = epoch
        return int(epoch)

    def epochs(self) -> dict[str, int]:
        return self.inner.epochs()

    def key_ids(self) -> list[dict[str, object]]:
        return self.inner.key_ids()

    def health(self) -> str | None:
        return self.inner.health()

    def close(self) -> None:
        self.inner.close()


class JournalWatch:
    """Asks the journal every second whether it answers: the journal_unavailable alarm
    (raised by the first failed call too, so an epoch attempt does not wait for it)."""

    def __init__(self, journal: JournalStore, telemetry: Telemetry,
                 interval_s: float = 1.0) -> None:
        self.journal = journal
        self._telemetry = telemetry
        self.interval_s = interval_s
        self.problem: str | None = None
        self.checked_at: float | None = None

    def observe(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem is not None:
                log.critical("journal (%s) unavailable: %s; no new epoch until it answers "
                             "(never a local fall-back)", self.journal.backend, problem)
            elif self.problem is not None:
                log.warning("journal (%s) answers again", self.journal.backend)
        self.problem = problem
        self.checked_at = time.time()
        self._telemetry.journal_health(self.journal.backend, problem)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(JournalError):
                self.observe(await asyncio.to_thread(self.journal.health))
            await asyncio.sleep(self.interval_s)

    def as_dict(self) -> dict[str, object]:
        return {"backend": self.journal.backend, "healthy": self.problem is None,
                "detail": self.problem, "checked_at": self.checked_at}
