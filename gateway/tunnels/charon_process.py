"""A private strongSwan charon daemon, optionally inside a network namespace.

Used by the tests, the benchmark and the demo: each instance has its own
directory holding its strongswan.conf, its VICI socket and its log file, so
several charons run side by side (one per namespace) without touching the
host's /etc/strongswan.conf or /run. Production gateways talk to the system's
charon and never use this module.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

CHARON_BINARY = Path("/usr/lib/ipsec/charon")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# Explicit plugin list: `load_modular` depends on /etc/strongswan.d, which a
# private instance must not read. kernel-libipsec gives userspace ESP over a
# TUN device where the kernel has no ESP (as on the build machines).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "hmac", "gcm", "kdf",
    "pem", "pkcs1", "pkcs8", "x509", "pubkey", "revocation", "constraints",
    "kernel-libipsec", "kernel-netlink", "socket-default", "vici",
)

#: The Debian 12 package of each plugin that is not in libstrongswan itself.
PLUGIN_PACKAGES: dict[str, str] = {
    "openssl": "libstrongswan-standard-plugins",
    "gcm": "libstrongswan-standard-plugins",
    "kernel-libipsec": "libcharon-extra-plugins",
    "socket-default": "strongswan-libcharon",
    "vici": "strongswan-swanctl",
}

#: Starts a process; given the argv to run, returns the child. A NetnsLab's
#: `popen` fits; by default `ip netns exec NS` wraps the argv.
Spawner = Callable[[Sequence[str]], "subprocess.Popen[bytes]"]


class CharonError(RuntimeError):
    """charon could not be started, reached or stopped."""


def charon_missing_reason() -> str | None:
    """Why a private charon with kernel-libipsec cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "charon in a network namespace needs root"
    if not CHARON_BINARY.exists():
        return f"{CHARON_BINARY} missing (Debian package strongswan-charon)"
    for plugin in ("kernel-libipsec", "vici", "kernel-netlink", "openssl", "gcm"):
        if not (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists():
            package = PLUGIN_PACKAGES.get(plugin, "libstrongswan")
            return f"strongSwan plugin {plugin} missing (Debian package {package})"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun missing (kernel-libipsec needs TUN)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "`ip` (iproute2) or `unshare` (util-linux) missing"
    return None


def render_strongswan_conf(
    vici_socket: Path,
    log_file: Path,
    *,
    plugins: Sequence[str] = DEFAULT_PLUGINS,
    log_level: int = 1,
    extra: str = "",
) -> str:
    """The strongswan.conf of a private instance (no includes of /etc)."""
    # Level 1 ("control"/"basic") never prints PPK or PSK values; level 4
    # would dump raw key material, so the level is capped.
    level = max(-1, min(log_level, 2))
    return (
        "charon {\n"
        f"  load = {' '.join(plugins)}\n"
        "  make_before_break = yes\n"
        "  install_virtual_ip = no\n"
        "  retransmit_tries = 3\n"
        "  retransmit_timeout = 1.0\n"
        "  retransmit_base = 1.4\n"
        "  plugins {\n"
        f"    vici {{\n      socket = unix://{vici_socket}\n    }}\n"
        "  }\n"
        "  filelog {\n"
        "    private {\n"
        f"      path = {log_file}\n"
        "      time_format = %H:%M:%S\n"
        "      ike_name = yes\n"
        "      append = yes\n"
        f"      default = {level}\n"
        "      flush_line = yes\n"
        "    }\n"
        "  }\n"
        "  syslog {\n    daemon {\n      default = -1\n    }\n  }\n"
        f"{extra}"
        "}\n"
    )


def patched_libipsec_dir() -> Path | None:
    """The directory where `make setup` put libipsec.so.0 with qsgw's patch
    (scripts/strongswan/: a rotation's responder holds its new outbound SA until the
    initiator has sent on it), or None."""
    lib = Path(sys.prefix) / "opt" / "libipsec" / "lib"
    return lib if (lib / "libipsec.so.0").exists() else None


class CharonInstance:
    """One charon process with a private directory; start/stop/restart.

    `workdir` receives strongswan.conf, charon.vici (the VICI socket) and
    charon.log. `netns` names the namespace to run in (None: the caller's).
    """

    def __init__(
        self,
        workdir: Path,
        netns: str | None = None,
        *,
        spawn: Spawner | None = None,
        plugins: Sequence[str] = DEFAULT_PLUGINS,
        log_level: int = 1,
        extra_conf: str = "",
        library_path: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        # Searched before charon's RUNPATH: where a patched libipsec.so.0 is.
        self.library_path = library_path
        self.netns = netns
        self._spawn = spawn
        self._plugins = tuple(plugins)
        self._log_level = log_level
        self._extra_conf = extra_conf
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def vici_socket(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def conf_file(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return (
            f"CharonInstance(workdir={str(self.workdir)!r}, netns={self.netns!r}, "
            f"pid={self.pid})"
        )

    def argv(self) -> list[str]:
        """The command line, without the namespace wrapper."""
        # A private mount namespace with its own /run: charon's pid file and
        # lock live there, so charons in several namespaces do not collide.
        libs = ""
        if self.library_path is not None:
            libs = f"LD_LIBRARY_PATH={shlex.quote(str(self.library_path))} "
        inner = (
            "mount -t tmpfs tmpfs /run && "
            f"{libs}STRONGSWAN_CONF={shlex.quote(str(self.conf_file))} "
            f"exec {shlex.quote(str(CHARON_BINARY))}"
        )
        return ["unshare", "-m", "sh", "-c", inner]

    def start(self, timeout: float = 15.0) -> None:
        """Write the config, start charon, and wait until VICI answers."""
        if self.running:
            raise CharonError("charon already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        self.conf_file.write_text(
            render_strongswan_conf(
                self.vici_socket,
                self.log_file,
                plugins=self._plugins,
                log_level=self._log_level,
                extra=self._extra_conf,
            )
        )
        self.vici_socket.unlink(missing_ok=True)
        argv = self.argv()
        if self._spawn is not None:
            self._proc = self._spawn(argv)
        else:
            if self.netns is not None:
                argv = ["ip", "netns", "exec", self.netns, *argv]
            stderr_log = (self.workdir / "charon.stderr").open("ab")
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                stderr_log.close()
        try:
            self._wait_for_vici(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_for_vici(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise CharonError(
                    f"charon exited with status {self._proc.returncode} during start; "
                    f"see {self.log_file}"
                )
            if self.vici_socket.exists():
                with socket.socket(socket.AF_UNIX) as probe:
                    try:
                        probe.connect(str(self.vici_socket))
                        return
                    except OSError:
                        pass
            time.sleep(0.05)
        raise CharonError(f"charon's VICI socket did not appear within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # The shell execs charon, so the pid is charon's (the `ip netns
            # exec` wrapper execs too); signal the pid, not a process group
            # that a spawner may share with others.
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.vici_socket.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL at once (a crash, for tests of recovery)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5.0)
        self.vici_socket.unlink(missing_ok=True)

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> CharonInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
