"""Throw-away network namespaces: sites, veth links, addresses, routes, processes.

Used by the integration tests, the benchmarks and `make demo` to run whole
sites on one machine. Everything a `NetnsLab` makes carries a random suffix
and is removed when the lab closes, also after an exception; `cleanup_stale`
removes what a crashed run left behind.

pyroute2 does the netlink work; `ip netns exec` only starts processes inside
a namespace (it also bind-mounts /etc/netns/NS, which pyroute2 cannot do).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from pyroute2 import NetNS, netns

from gateway.netns_probe import netns_unavailable_reason

__all__ = [
    "DEFAULT_PREFIX",
    "Link",
    "NetnsError",
    "NetnsLab",
    "cleanup_stale",
    "netns_unavailable_reason",
    "require_root",
]

#: Every lab namespace name starts with this, so `cleanup_stale` finds them.
DEFAULT_PREFIX = "qsgw"
_IFNAMSIZ = 15
_NETNS_DIR = "/var/run/netns"
_BRIDGE = "br0"


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _loop_safe(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run `fn` in a worker thread when called from a running event loop.

    pyroute2's sync sockets drive an asyncio loop of their own and fail with
    "This event loop is already running" inside async code (async tests, the
    demo); a worker thread has no running loop.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(1, "netns") as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return wrapper


class NetnsError(RuntimeError):
    """A namespace, link, address, route or process could not be set up."""


@dataclass(frozen=True, slots=True)
class Link:
    """One veth pair: `ifname_a` lives in `ns_a`, `ifname_b` in `ns_b`."""

    ns_a: str
    ifname_a: str
    ns_b: str
    ifname_b: str


def require_root() -> None:
    """For tests: skip (pytest.skip) with the reason when namespaces are unusable."""
    reason = netns_unavailable_reason()
    if reason is not None:
        import pytest  # test-only helper; the daemon never calls this

        pytest.skip(reason)


def _kill_group(proc: subprocess.Popen[Any], term_timeout_s: float) -> None:
    """SIGTERM the process group, SIGKILL it if it outlives the bound, reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout_s)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (D state): give up
        proc.wait(timeout=term_timeout_s)


def _pids_in(ns_name: str) -> list[int]:
    try:
        out = subprocess.run(
            ["ip", "netns", "pids", ns_name],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _remove_ns(ns_name: str, term_timeout_s: float = 2.0) -> None:
    # Processes left in a namespace (ones the lab did not start itself, e.g.
    # a driver's wireguard-go) keep its veths alive; end them first, politely
    # so that wireguard-go removes its socket from /var/run/wireguard.
    pids = _pids_in(ns_name)
    if pids:
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + term_timeout_s
        while time.monotonic() < deadline and any(map(_running, pids)):
            time.sleep(0.02)
        _signal_all(_pids_in(ns_name), signal.SIGKILL)
    try:
        netns.remove(ns_name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetnsError(f"cannot remove namespace {ns_name}: {exc.strerror or exc}") from exc


@_loop_safe
def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces named `prefix-…` left by a crashed run; return their names.

    Killing the processes inside also ends any wireguard-go there, which
    removes its UAPI socket.
    """
    if not prefix:
        raise ValueError("prefix must not be empty (it would match every namespace)")
    removed = []
    for name in netns.listnetns():
        if name.startswith(prefix + "-"):
            _remove_ns(name)
            removed.append(name)
    return removed


class LabBusy(NetnsError):
    """Another live run holds the lock for this namespace prefix."""


class PrefixLock:
    """The machine-wide lock for one namespace prefix, taken on creation (flock,
    released on exit or when the process ends, however it ends); once held, what
    a crashed run left under the prefix is removed.

    Stale cleanup matches namespaces by prefix, so without the lock a second demo
    would remove a first one's namespaces while it still runs.
    """

    def __init__(self, prefix: str, lock_dir: str = "/run/lock") -> None:
        os.makedirs(lock_dir, exist_ok=True)
        self.path = os.path.join(lock_dir, f"qsgw-{prefix}.lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise LabBusy(f"another run with namespace prefix {prefix!r} is going "
                          f"(pid {holder}, lock {self.path}); one at a time") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        cleanup_stale(prefix)

    def __enter__(self) -> PrefixLock:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # releases the lock


class NetnsLab:
    """Namespaces, veths, addresses, routes and processes, all undone on exit.

    Namespaces are added under a short logical name (``"a"``, ``"core"``);
    every method takes that logical name (or the real one) and the real name
    is ``lab.ns_name("a")``, e.g. ``qsgw-a-3f9c1e``.

    ::

        with NetnsLab() as lab:
            lab.add_namespace("a"); lab.add_namespace("b")
            lab.connect("a", "b", ["192.0.2.1/24", "fd00:1::1/64"],
                        ["192.0.2.2/24", "fd00:1::2/64"])
            lab.run("a", ["ping", "-c1", "-W1", "192.0.2.2"], check=True)
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, term_timeout_s: float = 3.0) -> None:
        self.prefix = prefix
        self.suffix = secrets.token_hex(3)
        self.term_timeout_s = term_timeout_s
        self._ns: dict[str, str] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._links: list[Link] = []
        self._bridge_ports = 0
        self._closed = False

    # -- context management ------------------------------------------------

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @_loop_safe
    def close(self) -> None:
        """Kill every process started, delete every namespace (and its veths)."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            _kill_group(proc, self.term_timeout_s)
        errors = []
        for real in reversed(list(self._ns.values())):
            try:
                _remove_ns(real, self.term_timeout_s)
            except NetnsError as exc:
                errors.append(str(exc))
        if errors:
            raise NetnsError("; ".join(errors))

    @property
    def namespaces(self) -> Mapping[str, str]:
        """Logical name -> real namespace name, for every namespace made."""
        return dict(self._ns)

    @property
    def links(self) -> Sequence[Link]:
        return tuple(self._links)

    @property
    def processes(self) -> Sequence[subprocess.Popen[Any]]:
        return tuple(self._procs)

    def ns_name(self, name: str) -> str:
        """The real namespace name of a logical (or real) name of this lab."""
        if name in self._ns:
            return self._ns[name]
        if name in self._ns.values():
            return name
        raise NetnsError(f"no namespace {name!r} in this lab")

    def unique(self, stem: str) -> str:
        """`stem` plus this lab's suffix, cut to an interface name (15 chars)."""
        return f"{stem[: _IFNAMSIZ - len(self.suffix)]}{self.suffix}"

    # -- namespaces and links ---------------------------------------------

    @_loop_safe
    def add_namespace(self, name: str) -> str:
        """Create a namespace with loopback up and IPv6 DAD off; return its real name."""
        self._check_open()
        if name in self._ns:
            raise NetnsError(f"namespace {name!r} already exists in this lab")
        real = f"{self.prefix}-{name}-{self.suffix}"
        try:
            netns.create(real)
        except OSError as exc:
            raise NetnsError(f"cannot create namespace {real}: {exc.strerror or exc}") from exc
        self._ns[name] = real
        with NetNS(real) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        # Without this, IPv6 addresses stay "tentative" for ~2 s and cannot be used.
        self.run(
            name,
            ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
             "net.ipv6.conf.default.accept_dad=0"],
            check=True,
        )
        return real

    def enable_forwarding(self, name: str) -> None:
        """Let a namespace route between its interfaces (IPv4 and IPv6)."""
        self.run(
            name,
            ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
            check=True,
        )

    @_loop_safe
    def connect(
        self,
        ns_a: str,
        ns_b: str,
        addresses_a: Sequence[str] = (),
        addresses_b: Sequence[str] = (),
        ifname_a: str | None = None,
        ifname_b: str | None = None,
    ) -> Link:
        """A veth pair between two namespaces, addressed (CIDR strings) and up."""
        self._check_open()
        real_a, real_b = self.ns_name(ns_a), self.ns_name(ns_b)
        n = len(self._links)
        if_a = ifname_a or f"veth{n}a"
        if_b = ifname_b or f"veth{n}b"
        for ifname in (if_a, if_b):
            if len(ifname) > _IFNAMSIZ:
                raise NetnsError(f"interface name {ifname!r} is longer than 15 characters")
        try:
            with NetNS(real_a) as ipr:
                ipr.link("add", ifname=if_a, kind="veth",
                         peer={"ifname": if_b, "net_ns_fd": real_b})
        except Exception as exc:
            raise NetnsError(f"cannot create veth {if_a} in {real_a}: {exc}") from exc
        link = Link(real_a, if_a, real_b, if_b)
        self._links.append(link)
        for real, ifname, addrs in ((real_a, if_a, addresses_a), (real_b, if_b, addresses_b)):
            for cidr in addrs:
                self.add_address(real, ifname, cidr)
            self.set_up(real, ifname)
        return link

    @_loop_safe
    def add_bridge(self, core: str = "core") -> str:
        """A namespace holding one bridge, for 3+ sites on one segment."""
        real = self.add_namespace(core)
        with NetNS(real) as ipr:
            ipr.link("add", ifname=_BRIDGE, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=_BRIDGE)[0], state="up")
        return real

    @_loop_safe
    def attach(
        self, name: str, addresses: Sequence[str] = (), core: str = "core",
        ifname: str = "eth0",
    ) -> Link:
        """Connect namespace `name` to the bridge in `core` (see add_bridge)."""
        port = f"p{self._bridge_ports}"
        self._bridge_ports += 1
        link = self.connect(core, name, (), addresses, ifname_a=port, ifname_b=ifname)
        with NetNS(self.ns_name(core)) as ipr:
            br = ipr.link_lookup(ifname=_BRIDGE)[0]
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=br)
        return link

    # -- addresses and routes ---------------------------------------------

    @_loop_safe
    def add_address(self, name: str, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with NetNS(self.ns_name(name)) as ipr:
            idx = self._index(ipr, ifname, name)
            try:
                ipr.addr("add", index=idx, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
            except Exception as exc:
                raise NetnsError(f"cannot add {cidr} to {ifname} in {name}: {exc}") from exc

    @_loop_safe
    def set_up(self, name: str, ifname: str) -> None:
        with NetNS(self.ns_name(name)) as ipr:
            ipr.link("set", index=self._index(ipr, ifname, name), state="up")

    @_loop_safe
    def add_route(
        self, name: str, dst: str, gateway: str | None = None, ifname: str | None = None,
    ) -> None:
        """A route in namespace `name` to `dst` (CIDR) via a gateway and/or device."""
        kw: dict[str, Any] = {"dst": dst}
        if gateway is not None:
            kw["gateway"] = gateway
        with NetNS(self.ns_name(name)) as ipr:
            if ifname is not None:
                kw["oif"] = self._index(ipr, ifname, name)
            try:
                ipr.route("add", **kw)
            except Exception as exc:
                raise NetnsError(f"cannot add route to {dst} in {name}: {exc}") from exc

    @_loop_safe
    def interfaces(self, name: str) -> list[str]:
        with NetNS(self.ns_name(name)) as ipr:
            return [str(link.get("ifname")) for link in ipr.get_links()]

    # -- processes ---------------------------------------------------------

    def argv_in(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.ns_name(name), *argv]

    def popen(self, name: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in a namespace; the lab kills it (and its group) on close."""
        self._check_open()
        kw.setdefault("stdin", subprocess.DEVNULL)
        # Own process group: close() ends children such as a `sh -c` pipeline too.
        kw["start_new_session"] = True
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv_in(name, argv), **kw)
        self._procs.append(proc)
        return proc

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 10.0, check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace to completion; output captured as text."""
        try:
            res = subprocess.run(
                self.argv_in(name, argv), capture_output=True, text=True, timeout=timeout,
                check=False, stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
            )
        except subprocess.TimeoutExpired as exc:
            raise NetnsError(f"{argv[0]} in {name} ran past {timeout} s") from exc
        if check and res.returncode != 0:
            raise NetnsError(
                f"{' '.join(argv)} in {name} exited {res.returncode}: {res.stderr.strip()}"
            )
        return res

    def ping(self, name: str, address: str, count: int = 1, wait_s: int = 1) -> bool:
        """True if `address` answers an ICMP echo from namespace `name` (bounded)."""
        res = self.run(
            name, ["ping", "-n", "-q", "-c", str(count), "-W", str(wait_s), address],
            timeout=count * wait_s + 5,
        )
        return res.returncode == 0

    def wait_ping(self, name: str, address: str, timeout_s: float = 10.0) -> bool:
        """Ping once a second until an answer or `timeout_s`; True on an answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ping(name, address):
                return True
            if time.monotonic() >= deadline:
                return False

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _index(ipr: Any, ifname: str, name: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetnsError(f"no interface {ifname} in namespace {name}")
        return int(found[0])

    def _check_open(self) -> None:
        if self._closed:
            raise NetnsError("this NetnsLab is closed")
