"""Whole gateway sites in network namespaces: used by `make demo`, the integration
tests and the rekey benchmark.

One "core" namespace holds a bridge (the WAN); each site is a namespace with
an address on it (198.51.100.0/24); the KME simulator runs in its own
namespace on that bridge; every site gets a real identity (`qsgw keygen`),
real WireGuard keys (`wg genkey`), a config file, and a `qsgw run` daemon of
its own. Everything lives under a work directory and the lab's namespaces,
and is removed when the lab closes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.daemon.status import read_status
from gateway.identity import PREFIX
from qsgw_lab.netns import LabBusy, NetnsError, NetnsLab, PrefixLock
from qsgw_lab.sigterm import unwind_on_sigterm

KME_NS = "kme"
KME_ADDRESS = "198.51.100.250"
UNDERLAY_PREFIX = "198.51.100."
CONTROL_PORT = 7814


@dataclass
class Site:
    name: str  # logical namespace name
    gateway_id: str
    sae_id: str
    kme_id: str
    underlay_ip: str
    dir: Path = field(default_factory=Path)
    identity_text: str = ""
    static_kem_pin: dict[str, str] | None = None  # what peers pin (keygen --static-kem)
    peers: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    charon: Any = None

    @property
    def config_path(self) -> Path:
        return self.dir / "gateway.yaml"

    @property
    def status_socket(self) -> Path:
        return self.dir / "status.sock"

    @property
    def log_path(self) -> Path:
        return self.dir / "daemon.log"


@dataclass
class Tunnel:
    a: Site
    b: Site
    index: int
    policy: str
    rekey_interval_s: float
    key_lifetime_s: float
    kind: str = "wireguard"
    if_a: str = ""  # WireGuard interface, or the IPsec connection name
    if_b: str = ""

    @property
    def ip_a(self) -> str:
        return f"203.0.113.{4 * self.index + 1}"

    @property
    def ip_b(self) -> str:
        return f"203.0.113.{4 * self.index + 2}"


def start_demo(prefix: str) -> PrefixLock | None:
    """What a demo does before building its lab: SIGTERM (a CI timeout, `kill`)
    unwinds like Ctrl-C, so the lab is removed; then the prefix's lock (None, with
    the reason on stderr, if another demo holds it)."""
    unwind_on_sigterm()
    try:
        return PrefixLock(prefix)
    except LabBusy as exc:
        print(exc, file=sys.stderr)
        return None


def qsgw_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


class SiteLab:
    """Build sites, start the simulator and the daemons; close() removes everything."""

    def __init__(self, lab: NetnsLab, workdir: Path, topology: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.topology = topology
        self.sites: dict[str, Site] = {}
        self.tunnels: list[Tunnel] = []
        self.endpoints: dict[str, Any] = {}
        self._sim: subprocess.Popen[bytes] | None = None
        self.broker: dict[str, Any] = {}
        self._broker_proc: subprocess.Popen[bytes] | None = None
        self._broker_argv: list[str] = []
        self._core_ready = False

    # ------------------------------------------------------------------ network

    def _core(self) -> None:
        if self._core_ready:
            return
        self.lab.add_bridge("core")
        self.lab.add_namespace(KME_NS)
        self.lab.attach(KME_NS, [f"{KME_ADDRESS}/24"])
        self._core_ready = True

    def add_site(self, name: str, gateway_id: str, sae_id: str, kme_id: str,
                 static_kem: str | None = None) -> Site:
        self._core()
        ip = f"{UNDERLAY_PREFIX}{len(self.sites) + 1}"
        site = Site(name, gateway_id, sae_id, kme_id, ip, self.workdir / name)
        site.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lab.add_namespace(name)
        self.lab.attach(name, [f"{ip}/24"])
        extra = ("--static-kem", static_kem) if static_kem else ()
        out = subprocess.run(qsgw_argv("keygen", "--out", str(site.dir / "identity"), *extra),
                             capture_output=True, text=True, check=True, timeout=60)
        site.identity_text = next(line.strip() for line in out.stdout.splitlines()
                                  if line.strip().startswith(PREFIX))
        pin = next((line for line in out.stdout.splitlines() if line.startswith("static_kem:")),
                   None)
        if pin is not None:
            got = yaml.safe_load(pin)["static_kem"]
            site.static_kem_pin = {"public_file": str(site.dir / "identity" / got["public_file"]),
                                   "sha256": got["sha256"]}
        self.sites[name] = site
        return site

    def add_wireguard_tunnel(self, a: Site, b: Site, policy: str = "required",
                             rekey_interval_s: float = 10.0,
                             key_lifetime_s: float = 25.0) -> Tunnel:
        t = Tunnel(a, b, len(self.tunnels), policy, rekey_interval_s, key_lifetime_s)
        t.if_a = self.lab.unique(f"wg{t.index}a")
        t.if_b = self.lab.unique(f"wg{t.index}b")
        port_a, port_b = 51820 + 2 * t.index, 51821 + 2 * t.index
        keys = {s.name: _wg_keypair(s.dir / f"wg-{t.index}.key") for s in (a, b)}
        for me, other, ifname, my_ip, other_ip, my_port, other_port in (
            (a, b, t.if_a, t.ip_a, t.ip_b, port_a, port_b),
            (b, a, t.if_b, t.ip_b, t.ip_a, port_b, port_a),
        ):
            me.peers.append(_peer_entry(other, t, {
                    "type": "wireguard",
                    "driver": "userspace",
                    "manage": "full",
                    "interface": ifname,
                    "private_key_file": str(me.dir / f"wg-{t.index}.key"),
                    "listen_port": my_port,
                    "addresses": [f"{my_ip}/30"],
                    "peer_public_key": keys[other.name],
                    "endpoint": f"{other.underlay_ip}:{other_port}",
                    "allowed_ips": [f"{other_ip}/32"],
            }))
        self.tunnels.append(t)
        return t

    def set_suite(self, suite: str) -> None:
        """Every peer entry uses `suite`; a peer site with a static KEM key is pinned
        (its .pub copied beside the config, as an operator would)."""
        by_id = {s.gateway_id: s for s in self.sites.values()}
        for site in self.sites.values():
            for peer in site.peers:
                peer["suite"] = suite
                pin = by_id[peer["id"]].static_kem_pin
                if pin is not None:
                    copy = site.dir / f"{peer['id']}.static-kem.pub"
                    copy.write_bytes(Path(pin["public_file"]).read_bytes())
                    peer["static_kem"] = {"public_file": str(copy), "sha256": pin["sha256"]}

    def _charon(self, site: Site) -> Any:
        """This site's private charon (kernel-libipsec: userspace ESP over TUN)."""
        from gateway.tunnels.charon_process import CharonInstance, patched_libipsec_dir

        if site.charon is None:
            workdir = site.dir / "charon"
            workdir.mkdir(parents=True, exist_ok=True, mode=0o700)

            def spawn(argv: Sequence[str]) -> subprocess.Popen[bytes]:
                with (workdir / "charon.stderr").open("ab") as out:
                    return self.lab.popen(site.name, argv, stdout=out, stderr=subprocess.STDOUT)

            site.charon = CharonInstance(workdir, spawn=spawn, library_path=patched_libipsec_dir())
            site.charon.start()
        return site.charon

    def add_ipsec_tunnel(self, a: Site, b: Site, policy: str = "required",
                         rekey_interval_s: float = 10.0,
                         key_lifetime_s: float = 25.0) -> Tunnel:
        """An IKEv2 tunnel between the sites' inner addresses, PSK-authenticated,
        with the epoch key as RFC 8784 PPK (ppk_required)."""
        t = Tunnel(a, b, len(self.tunnels), policy, rekey_interval_s, key_lifetime_s, "ipsec")
        t.if_a = t.if_b = f"qsgw-{t.index}-{self.lab.suffix}"  # the connection name
        psk = self.workdir / f"ike-{t.index}.psk"
        fd = os.open(psk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        for me, other, my_ip, other_ip in ((a, b, t.ip_a, t.ip_b), (b, a, t.ip_b, t.ip_a)):
            self.lab.add_address(me.name, "lo", f"{my_ip}/32")
            charon = self._charon(me)
            me.peers.append(_peer_entry(other, t, {
                    "type": "ipsec",
                    "vici_socket": f"unix://{charon.vici_socket}",
                    "manage": "full",
                    "connection": t.if_a,
                    "ppk_id": f"{t.if_a}-ppk",
                    "local_addrs": [me.underlay_ip],
                    "remote_addrs": [other.underlay_ip],
                    "local_ts": [f"{my_ip}/32"],
                    "remote_ts": [f"{other_ip}/32"],
                    "auth": {"psk_file": str(psk)},
            }))
        self.tunnels.append(t)
        return t

    def restart_charon(self, site: Site) -> None:
        assert site.charon is not None
        site.charon.restart()

    # ------------------------------------------------------------------ KME simulator

    def start_simulator(self, timeout_s: float = 30.0, record_keys: bool = False) -> None:
        state = self.workdir / "kme-sim"
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = (self.workdir / "kme-sim.log").open("wb")
        self._sim = self.lab.popen(KME_NS, qsgw_argv(
            "kme-sim", "--topology", str(self.topology), "--state-dir", str(state),
            "--host", KME_ADDRESS, *(["--record-keys-for-tests"] if record_keys else [])),
            stdout=log, stderr=subprocess.STDOUT)
        endpoints = state / "endpoints.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._sim.poll() is not None:
                raise NetnsError(f"KME simulator exited; see {self.workdir / 'kme-sim.log'}")
            if endpoints.exists() and self._admin_ready(endpoints):
                self.endpoints = json.loads(endpoints.read_text())
                return
            time.sleep(0.2)
        raise NetnsError(f"KME simulator not ready within {timeout_s:g} s")

    def _admin_ready(self, endpoints: Path) -> bool:
        try:
            data = json.loads(endpoints.read_text())
            return bool(data.get("admin")) and all(
                "url" in k for k in data.get("kmes", {}).values())
        except (OSError, ValueError):
            return False

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the simulator's fault-injection endpoint (loopback of the KME namespace)."""
        url = self.endpoints["admin"] + path
        script = (
            "import json,sys,urllib.request\n"
            "m,u,b=sys.argv[1],sys.argv[2],sys.argv[3]\n"
            "r=urllib.request.Request(u,method=m,data=b.encode() if b else None,"
            "headers={'Content-Type':'application/json'})\n"
            "print(urllib.request.urlopen(r,timeout=5).read().decode())\n"
        )
        res = self.lab.run(KME_NS, [sys.executable, "-c", script, method, url,
                                    json.dumps(body) if body is not None else ""],
                           timeout=15, check=True)
        return json.loads(res.stdout) if res.stdout.strip() else None

    def set_fault(self, kme_id: str, **fault: Any) -> None:
        self.admin("PUT", f"/faults/{kme_id}", fault)

    def clear_faults(self) -> None:
        self.admin("DELETE", "/faults")

    def recorded_keys(self) -> dict[str, str]:
        """key_ID -> base64 key of every QKD key handed out (simulator started with
        record_keys=True): for tests that search outputs for key material."""
        return dict(self.admin("GET", "/recorded-keys")["keys"])

    def delivered(self, sae_id: str) -> list[str]:
        return list(self.admin("GET", f"/delivered/{sae_id}")["key_IDs"])

    # ------------------------------------------------------------------ MQTT broker

    def start_broker(self, port: int = 1883, timeout_s: float = 10.0) -> dict[str, Any]:
        """A real mosquitto in the KME namespace (password auth), for telemetry."""
        d = self.workdir / "mosquitto"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        user, password = "qsgw", secrets.token_urlsafe(16)
        passwd = d / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), user, password],
                       check=True, capture_output=True, timeout=30)
        pw_file = d / "client.password"
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        conf = d / "mosquitto.conf"
        # Persistence: subscribers' sessions survive a broker restart (tests stop it).
        conf.write_text(f"user root\npersistence true\npersistence_location {d}/\n"
                        f"log_dest file {d / 'mosquitto.log'}\n"
                        f"allow_anonymous false\npassword_file {passwd}\n"
                        f"listener {port} {KME_ADDRESS}\n")
        self._broker_argv = ["mosquitto", "-c", str(conf)]
        self._broker_proc = self.lab.popen(KME_NS, self._broker_argv,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = self.lab.run(KME_NS, ["mosquitto_pub", "-h", KME_ADDRESS, "-p", str(port),
                                        "-u", user, "-P", password, "-t", "qsgw-lab/ready",
                                        "-m", "1"], timeout=5)
            if res.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise NetnsError("mosquitto did not start")
        self.broker = {"host": KME_ADDRESS, "port": port, "username": user,
                       "password_file": str(pw_file), "password": password}
        return self.broker

    def stop_broker(self) -> None:
        """Stop mosquitto (the gateways' telemetry has nowhere to go until restart)."""
        proc = self._broker_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    def restart_broker(self) -> None:
        self._broker_proc = self.lab.popen(KME_NS, self._broker_argv,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def subscribe(self, topic: str, session: str | None = None) -> subprocess.Popen[str]:
        """mosquitto_sub in the KME namespace: one line per message, `TOPIC PAYLOAD`.
        `session`: a persistent session (QoS 1) under that client ID, so messages
        published while the subscriber is away are kept for it."""
        b = self.broker
        extra = ["-c", "-i", session, "-q", "1"] if session else []
        return self.lab.popen(KME_NS, ["mosquitto_sub", "-h", b["host"], "-p", str(b["port"]),
                                       "-u", b["username"], "-P", b["password"], "-t", topic,
                                       "-v", *extra], stdout=subprocess.PIPE, text=True,
                              bufsize=1)

    # ------------------------------------------------------------------ gateways

    def write_config(self, site: Site, extra: dict[str, Any] | None = None) -> None:
        sae = self.endpoints["saes"][site.sae_id]
        kme = self.endpoints["kmes"][sae["kme"]]
        doc: dict[str, Any] = {
            "gateway": {
                "id": site.gateway_id,
                "identity_dir": str(site.dir / "identity"),
                "state_dir": str(site.dir / "state"),
                "status_socket": str(site.status_socket),
            },
            "control": {"listen": f"{site.underlay_ip}:{CONTROL_PORT}", "rate_limit_per_s": 50},
            "kme": {
                "sae_id": site.sae_id,
                "endpoints": [{"url": kme["url"], "kme_id": sae["kme"]}],
                "ca_file": kme["ca"],
                "cert_file": sae["cert"],
                "key_file": sae["key"],
                "timeout_s": 3,
                "dec_keys_deadline_s": 5,
            },
            "peers": site.peers,
            "telemetry": {"logging": {"level": "info", "format": "json"}},
        }
        if self.broker:
            b = self.broker
            doc["telemetry"]["mqtt"] = {"host": b["host"], "port": b["port"],
                                        "username": b["username"],
                                        "password_file": b["password_file"]}
        if extra:
            _merge(doc, extra)
        tmp = site.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, site.config_path)

    def start_daemon(self, site: Site) -> None:
        if not site.config_path.exists():
            self.write_config(site)
        log = site.log_path.open("ab")
        site.process = self.lab.popen(site.name, qsgw_argv("run", "-c", str(site.config_path)),
                                      stdout=log, stderr=subprocess.STDOUT)

    def signal_daemon(self, site: Site, sig: signal.Signals) -> None:
        if site.process is not None and site.process.poll() is None:
            os.killpg(site.process.pid, sig) if sig == signal.SIGKILL \
                else site.process.send_signal(sig)

    def stop_daemon(self, site: Site, timeout_s: float = 15.0) -> int | None:
        proc = site.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        site.process = None
        return proc.returncode

    def status(self, site: Site) -> dict[str, Any] | None:
        try:
            return read_status(site.status_socket, timeout_s=2)
        except (OSError, ValueError):
            return None

    def peer_status(self, site: Site, peer_gateway_id: str) -> dict[str, Any] | None:
        doc = self.status(site)
        if doc is None:
            return None
        return next((p for p in doc["peers"] if p["peer"] == peer_gateway_id), None)

    def wait_for(self, predicate: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval_s)
        return bool(predicate())

    def preshared_key(self, site: Site, ifname: str) -> str | None:
        res = self.lab.run(site.name, ["wg", "show", ifname, "preshared-keys"], timeout=5)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        return res.stdout.split()[-1]

    def close(self) -> None:
        # Every daemon first: a charon stopping deletes its SAs, which a daemon
        # still watching the peer's charon would report as its tunnel going down.
        for site in self.sites.values():
            self.stop_daemon(site, timeout_s=10)
        for site in self.sites.values():
            if site.charon is not None:
                site.charon.stop()
        # The lab kills the simulator and removes the namespaces.


def _peer_entry(other: Site, t: Tunnel, tunnel: dict[str, Any]) -> dict[str, Any]:
    """A `peers:` entry of the config for the peer `other` over tunnel `t`."""
    return {
        "id": other.gateway_id,
        "sae_id": other.sae_id,
        "control": f"{other.underlay_ip}:{CONTROL_PORT}",
        "identity": other.identity_text,
        "qkd": t.policy,
        "rekey_interval_s": t.rekey_interval_s,
        "key_lifetime_s": t.key_lifetime_s,
        "retry_backoff_s": {"initial": 0.5, "max": 4},
        "tunnel": tunnel,
    }


def _wg_keypair(path: Path) -> str:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private + "\n")
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                            check=True, timeout=10).stdout.strip()
    return public


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


__all__: Sequence[str] = ("Site", "SiteLab", "Tunnel", "qsgw_argv", "start_demo")
