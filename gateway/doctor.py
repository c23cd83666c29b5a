"""What this machine has and lacks for a gateway config: the checks behind `qsgw doctor`.

Each check gives a `Finding`: what was looked at, whether it is there, and the
Debian package or step that fixes a gap. `by_setup` marks what `make setup`
installs (the Debian packages, the venv, liboqs); only those fail setup and,
under `CI`, the tests that need them. Kernel modules, a running broker, the
clock and file modes are the operator's, so they are reported, never fatal.
Charon is asked which plugins it loaded (VICI `stats`), not guessed from files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.doctor_finding import Finding, _ok
from gateway.tunnels.charon_process import (
    CHARON_BINARY,
    DEFAULT_PLUGINS,
    PLUGIN_DIR,
    PLUGIN_PACKAGES,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

#: Binaries the gateway, its demo or its tests run: (package, by_setup).
BINARIES: dict[str, tuple[str, bool]] = {
    "wireguard-go": ("wireguard-go", True),
    "wg": ("wireguard-tools", True),
    "swanctl": ("strongswan-swanctl", True),
    "mosquitto": ("mosquitto", True),
    "mosquitto_passwd": ("mosquitto", True),
    "mosquitto_pub": ("mosquitto-clients", True),
    "mosquitto_sub": ("mosquitto-clients", True),
    "ping": ("iputils-ping", True),
    "ip": ("iproute2", True),
    "unshare": ("util-linux", True),
    "sysctl": ("procps", True),
    "modprobe": ("kmod", True),
    "nft": ("nftables", True),
    "keepalived": ("keepalived", True),  # the HA pair's VRRP (tests, bench)
}

LIBOQS_FIX = "make setup builds liboqs"

#: Installed by a setup step still being written (the liboqs issue): reported with
#: its fix, but neither setup's exit status nor a CI test fails for it yet.
#: Remove "liboqs" once `make setup` builds liboqs.
PENDING_SETUP: frozenset[str] = frozenset()
KERNEL_NOTE = "a kernel module: no setup installs it"


# ------------------------------------------------------------------ binaries


def binary(name: str, feature: str, path: str | None = None) -> Finding:
    """Is `name` (or the configured `path`) on PATH and executable?"""
    package, by_setup = BINARIES.get(name, (name, False))
    exe = path or name
    found = shutil.which(exe)
    if found:
        return _ok(name, f"{exe} binary", found, feature, by_setup)
    return Finding(name, f"{exe} binary", "missing", "not found on PATH",
                   f"apt-get install {package}", by_setup, feature)


def postgresql(feature: str) -> Finding:
    """initdb, pg_ctl and postgres (Debian keeps them off PATH, in /usr/lib/postgresql/NN/bin):
    the HA tests start a server of their own."""
    import glob

    dirs = [os.path.dirname(p) for p in (shutil.which("initdb"),) if p]
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    for d in dirs:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "postgres", "psql")):
            return _ok("postgresql", "PostgreSQL server binaries", d, feature)
    return Finding("postgresql", "PostgreSQL server binaries", "missing",
                   "initdb/postgres not found", "apt-get install postgresql", True, feature)


def tun_device(feature: str) -> Finding:
    if Path("/dev/net/tun").exists():
        return _ok("tun", "/dev/net/tun", "present", feature, by_setup=False)
    return Finding("tun", "/dev/net/tun", "missing", "no TUN device",
                   "modprobe tun, or give the container --device /dev/net/tun", False, feature)


def kernel_module(module: str, feature: str) -> Finding:
    """Whether the kernel has `module` (loaded, built in, or loadable now)."""
    comp = f"kernel-{module}"
    if Path(f"/sys/module/{module}").exists():
        return _ok(comp, f"kernel module {module}", "loaded", feature, by_setup=False)
    if shutil.which("modprobe") and os.geteuid() == 0:
        res = subprocess.run(["modprobe", "-q", module], capture_output=True, timeout=10,
                             check=False)
        if res.returncode == 0:
            return _ok(comp, f"kernel module {module}", "loaded by modprobe", feature, False)
    return Finding(comp, f"kernel module {module}", "missing", f"{KERNEL_NOTE}",
                   f"a kernel with {module} (linux-image with CONFIG_{module.upper()})",
                   False, feature)


# -------------------------------------------------------------------- charon


def _vici_plugins(vici_socket: Path, timeout_s: float = 5.0) -> list[str]:
    import vici

    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(vici_socket))
        stats = vici.Session(sock).stats()
    finally:
        sock.close()
    return [p.decode() if isinstance(p, bytes) else str(p) for p in stats.get("plugins", [])]


def _throwaway_charon_plugins(plugins: Sequence[str]) -> list[str]:
    """Start a private charon asked to load `plugins`; return what it did load.

    It runs in a fresh network namespace (`unshare -n`), so its TUN device and
    sockets never touch the host's network, and goes when it is stopped.
    """
    from gateway.tunnels.charon_process import CharonInstance

    def spawn(argv: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["unshare", "-n", *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    from gateway.tunnels.charon_process import CharonError

    # charon needs its base set (random, nonce, ...) to start at all.
    load = tuple(dict.fromkeys((*DEFAULT_PLUGINS, *plugins)))
    with tempfile.TemporaryDirectory(prefix="qsgw-doctor-") as tmp:
        charon = CharonInstance(Path(tmp), spawn=spawn, plugins=load)
        try:
            charon.start(timeout=10.0)
        except CharonError as exc:
            log = charon.log_file.read_text(errors="replace") if charon.log_file.exists() else ""
            tail = " | ".join(log.strip().splitlines()[-3:])
            raise CharonError(f"{exc}: {tail or 'no log'}") from None
        try:
            return _vici_plugins(charon.vici_socket)
        finally:
            charon.stop()


def charon_plugins(
    needed: Sequence[str] = DEFAULT_PLUGINS, vici_socket: Path | None = None
) -> Iterator[Finding]:
    """charon itself, then each plugin in `needed` as charon reports it loaded.

    With a reachable `vici_socket` (the system's charon) that charon is asked;
    else, as root, a throwaway one; else only the plugin files are looked at.
    """
    feature = "ipsec"
    if not CHARON_BINARY.exists():
        yield Finding("charon", "charon daemon", "missing", f"{CHARON_BINARY} not found",
                      "apt-get install strongswan-charon", True, feature)
        return
    yield _ok("charon", "charon daemon", str(CHARON_BINARY), feature)
    loaded: list[str] | None = None
    source = ""
    if vici_socket is not None and vici_socket.exists():
        with contextlib.suppress(Exception):
            loaded, source = _vici_plugins(vici_socket), f"charon at {vici_socket}"
    if loaded is None:
        source = "plugin file present (not root: charon not asked)"
    if loaded is None and os.geteuid() == 0 and shutil.which("unshare"):
        source = "plugin file present (the test charon did not start)"
        try:
            loaded, source = _throwaway_charon_plugins(needed), "loaded by a test charon"
        except Exception as exc:  # reported as the finding
            yield Finding("charon", "charon starts", "missing", f"a test charon failed: {exc}",
                          "apt-get install strongswan-charon strongswan-libcharon", True, feature)
    for plugin in needed:
        package = PLUGIN_PACKAGES.get(plugin, "libstrongswan")
        check = f"charon plugin {plugin}"
        there = (plugin in loaded) if loaded is not None else \
            (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists()
        if there:
            yield _ok("charon-plugins", check, source, feature)
        else:
            why = "charon did not load it" if loaded is not None else "plugin file missing"
            yield Finding("charon-plugins", check, "missing", why,
                          f"apt-get install {package}", True, feature)


def vici_reachable(vici_socket: Path) -> Finding:
    check = f"charon VICI socket {vici_socket}"
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2.0)
            s.connect(str(vici_socket))
    except OSError as exc:
        return Finding("vici", check, "warn", f"not reachable: {exc.strerror or exc}",
                       "start charon (systemctl start strongswan) before qsgw", False, "ipsec")
    return _ok("vici", check, "charon answers", "ipsec", by_setup=False)


def libipsec_patched() -> Finding:
    from gateway.tunnels.charon_process import patched_libipsec_dir

    check = "libipsec with qsgw's patch"
    found = patched_libipsec_dir()
    if found is None:
        return Finding("libipsec-patched", check, "missing", "without it a rotation's "
                       "responder may send on the new SA before the initiator has it",
                       "make setup builds it", True, "ipsec")
    return _ok("libipsec-patched", check, str(found), "ipsec")


# --------------------------------------------------------------- the others


def liboqs() -> Finding:
    from gateway.crypto import oqs_provider

    found = oqs_provider.find_liboqs()
    if found is None:
        return Finding("liboqs", "liboqs shared library", "missing",
                       "needed by the frodo*, hqc*, mceliece* suites", LIBOQS_FIX, True, "liboqs")
    if not oqs_provider.available():
        return Finding("liboqs", "liboqs-python", "missing", f"liboqs at {found} but `oqs` "
                       "does not import", LIBOQS_FIX, True, "liboqs")
    return _ok("liboqs", "liboqs", found, "liboqs")


def netns() -> Finding:
    """Root and network namespaces (the demo, the tests and the benchmarks)."""
    from gateway.netns_probe import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason is None:
        return _ok("netns", "network namespaces", "root, can create one", "netns", False)
    fix = "run as root (CI does)" if os.geteuid() != 0 else "a kernel with CONFIG_NET_NS"
    return Finding("netns", "network namespaces", "missing", reason, fix, False, "netns")


def kme_simulator() -> Finding:
    """The KME simulator imports (its dependencies are in the venv setup makes)."""
    try:
        import kms_client.sim.server  # noqa: F401
    except ImportError as exc:
        return Finding("kme-sim", "KME simulator", "missing", f"does not import: {exc}",
                       "make setup (the venv)", True, "kme")
    return _ok("kme-sim", "KME simulator", "imports", "kme")


def mqtt_broker(host: str, port: int) -> Finding:
    check = f"MQTT broker {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        return Finding("mqtt-broker", check, "warn", f"not reachable: {exc.strerror or exc}",
                       "start the broker or fix telemetry.mqtt (qsgw queues events meanwhile)",
                       False, "mqtt")
    return _ok("mqtt-broker", check, "accepts connections", "mqtt", by_setup=False)


def clock() -> Iterator[Finding]:
    if time.time() < 1_704_067_200:  # 2024-01-01: certificates and audit times would lie
        yield Finding("clock", "clock", "warn", time.strftime("reads %Y-%m-%d, before 2024"),
                      "set the clock (NTP: timedatectl set-ntp true)", False, "clock")
        return
    try:
        time.clock_gettime(time.CLOCK_MONOTONIC)
    except OSError:  # pragma: no cover - every Linux has it
        yield Finding("clock", "monotonic clock", "missing", "CLOCK_MONOTONIC fails",
                      "a Linux kernel", False, "clock")
        return
    synced = None
    if shutil.which("timedatectl"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                 capture_output=True, text=True, timeout=5, check=False)
            if res.returncode == 0 and res.stdout.strip() in ("yes", "no"):
                synced = res.stdout.strip() == "yes"
    if synced is False:
        yield Finding("clock", "clock (NTP)", "warn", "not NTP-synchronised",
                      "timedatectl set-ntp true", False, "clock")
    else:
        how = "NTP-synchronised" if synced else "plausible (NTP state unknown: no systemd)"
        yield _ok("clock", "clock", how, "clock", by_setup=False)


def file_mode(path: Path, secret: bool, what: str) -> Finding:
    """A secret file must be 0600-ish (no group/other bits); a private dir 0700."""
    check = f"{what} {path}"
    try:
        st = path.stat()
    except OSError as exc:
        return Finding("files", check, "missing", exc.strerror or str(exc),
                       "qsgw keygen / create it" if "identity" in what else "create it",
                       False, "files")
    mode = stat.S_IMODE(st.st_mode)
    if secret and mode & 0o077:
        fix = f"chmod {'700' if path.is_dir() else '600'} {path}"
        return Finding("files", check, "missing", f"mode {mode:04o}, readable by others",
                       fix, False, "files")
    return _ok("files", check, f"mode {mode:04o}", "files", by_setup=False)


def _config_files(cfg: GatewayConfig) -> Iterator[tuple[Path, bool, str]]:
    gw = cfg.gateway
    yield Path(gw.identity_dir), True, "identity dir"
    for name in ("ed25519.key", "mldsa65.key"):
        yield Path(gw.identity_dir) / name, True, "identity key"
    if Path(gw.state_dir).exists():
        yield Path(gw.state_dir), True, "state dir"
    yield Path(cfg.kme.key_file), True, "KME client key"
    for peer in cfg.peers:
        t = peer.tunnel
        for attr in ("private_key_file",):
            if getattr(t, attr, None):
                yield Path(getattr(t, attr)), True, f"{peer.id} WireGuard key"
        auth = getattr(t, "auth", None)
        for attr in ("psk_file", "key_file"):
            if auth is not None and getattr(auth, attr, None):
                yield Path(getattr(auth, attr)), True, f"{peer.id} IKE {attr[:-5]}"
    mqtt = cfg.telemetry.mqtt
    if mqtt is not None:
        for attr in ("password_file", "key_file"):
            if getattr(mqtt, attr):
                yield Path(getattr(mqtt, attr)), True, f"MQTT {attr[:-5]}"


# ---------------------------------------------------------------- by feature


def wireguard_userspace(wireguard_go: str = "wireguard-go") -> list[Finding]:
    path = None if wireguard_go == "wireguard-go" else wireguard_go
    return [binary("wireguard-go", "wireguard", path), tun_device("wireguard")]


def tunnel_findings(cfg: GatewayConfig, live_charon: bool = True) -> list[Finding]:
    """What each configured tunnel type needs. `live_charon`: ask charon for its
    plugins (else only the plugin files are looked at: fast, for `qsgw run`)."""
    out: list[Finding] = []
    seen: set[str] = set()
    for peer in cfg.peers:
        t = peer.tunnel
        if t.type == "wireguard":
            key = f"wg-{t.driver}-{t.manage}-{t.wireguard_go}"
            if key in seen:
                continue
            seen.add(key)
            if t.driver == "kernel":
                out.append(kernel_module("wireguard", "wireguard"))
            elif t.manage == "full":
                out += wireguard_userspace(t.wireguard_go)
        else:
            sock = Path(t.vici_socket.removeprefix("unix://"))
            if f"ipsec-{sock}" in seen:
                continue
            seen.add(f"ipsec-{sock}")
            if live_charon:
                out += charon_plugins(_system_plugins(), sock)
                out.append(vici_reachable(sock))
            else:
                out += _ipsec_files(sock)
    return out


def _system_plugins() -> tuple[str, ...]:
    # A system charon may use the kernel's ESP; without it, kernel-libipsec.
    has_esp = Path("/sys/module/esp4").exists()
    return tuple(p for p in DEFAULT_PLUGINS if not (has_esp and p == "kernel-libipsec"))


def _ipsec_files(sock: Path) -> list[Finding]:
    """The quick check for `qsgw run`: charon and its plugin files are installed,
    or a charon answers at the socket (installed where we cannot see it)."""
    if sock.exists() and vici_reachable(sock).ok:
        return [_ok("charon", "charon", f"answers at {sock}", "ipsec")]
    return list(_plugin_files())


def _plugin_files() -> Iterator[Finding]:
    if not CHARON_BINARY.exists():
        yield Finding("charon", "charon daemon", "missing", f"{CHARON_BINARY} not found",
                      "apt-get install strongswan-charon", True, "ipsec")
        return
    for plugin in _system_plugins():
        if not (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists():
            package = PLUGIN_PACKAGES.get(plugin, "libstrongswan")
            yield Finding("charon-plugins", f"charon plugin {plugin}", "missing",
                          "plugin file missing", f"apt-get install {package}", True, "ipsec")


def everything() -> list[Finding]:
    """Every feature, for a machine without a config (and for `make setup`)."""
    out = wireguard_userspace()
    out.append(binary("wg", "wireguard"))
    out.append(kernel_module("wireguard", "wireguard"))
    out += charon_plugins()
    out.append(binary("swanctl", "ipsec"))
    out.append(kernel_module("esp4", "ipsec"))
    out.append(libipsec_patched())
    for tool in ("mosquitto", "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub"):
        out.append(binary(tool, "mqtt"))
    for tool in ("ip", "unshare", "sysctl", "ping", "nft", "modprobe"):
        out.append(binary(tool, "netns"))
    out.append(liboqs())
    out.append(postgresql("ha"))
    out.append(binary("keepalived", "ha"))
    out += clock()
    return out


def for_config(cfg: GatewayConfig) -> list[Finding]:
    out = tunnel_findings(cfg)
    if cfg.telemetry.mqtt is not None:
        out.append(mqtt_broker(cfg.telemetry.mqtt.host, cfg.telemetry.mqtt.port))
    if any(_uses_liboqs(p.suite) for p in cfg.peers):
        out.append(liboqs())
    out += clock()
    out += (file_mode(p, s, w) for p, s, w in _config_files(cfg))
    return out


def _uses_liboqs(suite: str) -> bool:
    from gateway.crypto.suites import BUILTIN_SUITE_NAMES

    return suite not in BUILTIN_SUITE_NAMES


def blockers(cfg: GatewayConfig) -> list[Finding]:
    """What stops `qsgw run` from running this config's tunnel types (fast checks)."""
    return [f for f in tunnel_findings(cfg, live_charon=False) if f.status == "missing"]


def setup_gaps(findings: Iterable[Finding]) -> list[Finding]:
    """What `make setup` should have installed and did not (pending steps aside)."""
    return [f for f in findings
            if f.status == "missing" and f.by_setup and f.component not in PENDING_SETUP]


def find(component: str, findings: Iterable[Finding] | None = None) -> list[Finding]:
    """The findings for one component (computed for it alone when not given)."""
    pool = list(findings) if findings is not None else list(component_findings(component))
    return [f for f in pool if f.component == component]


def component_findings(component: str) -> Iterator[Finding]:
    """Just the checks one component needs (the tests' helper asks per component)."""
    if component in BINARIES:
        yield binary(component, "")
    elif component == "tun":
        yield tun_device("")
    elif component == "postgresql":
        yield postgresql("")
    elif component in ("charon", "charon-plugins"):
        yield from charon_plugins()
    elif component == "liboqs":
        yield liboqs()
    elif component == "libipsec-patched":
        yield libipsec_patched()
    elif component == "netns":
        yield netns()
    elif component == "kme-sim":
        yield kme_simulator()
    elif component.startswith("kernel-"):
        yield kernel_module(component.removeprefix("kernel-"), "")
    else:
        raise KeyError(f"unknown component {component!r}")
