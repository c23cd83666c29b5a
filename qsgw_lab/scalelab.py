"""A hub gateway with thousands of peers in one namespace: what the scale bench runs.

Everything lives in one network namespace and one work directory, removed when
the lab closes: the KME simulator (a generated madqci-style topology: one hub
KME, a few remote KMEs each serving thousands of SAEs, all pairs drawing on one
shared MDI-QKD hub pool), one wireguard-go interface holding every peer (set
up in one UAPI transaction; the hub keys it with `manage: psk-only`), the hub's
`qsgw run` daemon, and a few `qsgw_lab.remote_peers` processes that are the
remote gateways. Peer i controls from 127.20.(i // 250).(i % 250 + 1); the hub
initiates to the even peers and answers the odd ones.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.identity import LocalIdentity
from gateway.tunnels.wireguard_uapi import UapiClient
from qsgw_lab.netns import NetnsLab

HUB_ID = "hub"
HUB_SAE = "SAE_HUB"
HUB_KME = "KME_HUB"
CONTROL_PORT = 7814
METRICS_PORT = 9814
REMOTE_PORT = 7900  # remote process k listens on REMOTE_PORT + k
KME_BASE_PORT = 8600
KEY_BITS = 256

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def peer_address(i: int) -> str:
    return f"127.20.{i // 250}.{i % 250 + 1}"


def peer_id(i: int) -> str:
    return f"br{i:05d}"


@dataclass
class ScaleLab:
    lab: NetnsLab
    workdir: Path
    peers: int
    remotes: int
    rekey_interval_s: float = 120.0
    key_lifetime_s: float = 300.0
    warmup_s: float = 60.0
    ns: str = "hub"
    ifname: str = ""
    endpoints: dict[str, Any] = field(default_factory=dict)
    hub_identity: str = ""
    peer_docs: list[dict[str, Any]] = field(default_factory=list)
    hub: subprocess.Popen[bytes] | None = None
    remote_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sim_proc: subprocess.Popen[bytes] | None = None
    wg_proc: subprocess.Popen[bytes] | None = None
    figures: dict[str, float] = field(default_factory=dict)
    remote_errors: dict[str, int] = field(default_factory=dict)
    remote_cut: dict[str, int] = field(default_factory=dict)  # handshakes cut by the stop
    # The hub's peers one file each in peers.d (the layout docs/operations.md advises
    # for hubs: a reload reads only the files that changed), or all in gateway.yaml.
    peers_dir: bool = True
    # pin: the hub and its wireguard-go on CPU 0, the simulator and the remote sides
    # on the others, so that the hub's figures are not the load generator's.
    pin: bool = False

    def _cpus(self, role: str) -> list[str]:
        n = os.cpu_count() or 1
        if not self.pin or n < 2:
            return []
        return ["taskset", "-c", "0" if role == "hub" else f"1-{n - 1}"]

    @property
    def config_path(self) -> Path:
        return self.workdir / "hub" / "gateway.yaml"

    @property
    def status_socket(self) -> Path:
        return self.workdir / "hub" / "status.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "hub" / "daemon.log"

    @property
    def journal_path(self) -> Path:
        return self.workdir / "hub" / "state" / "journal.db"

    @property
    def go_file(self) -> Path:
        """Made once the hub is up: the remote sides start initiating then."""
        return self.workdir / "go"

    def remote_of(self, i: int) -> int:
        return i % self.remotes

    # ------------------------------------------------------------------ build

    def build(self) -> None:
        self.lab.add_namespace(self.ns)
        self.ifname = f"{self.lab.prefix[:6]}sc{os.getpid() % 10000}"[:15]
        (self.workdir / "hub").mkdir(mode=0o700, exist_ok=True)
        self._start_simulator()
        self._identities()
        self._start_wireguard()

    def topology(self) -> dict[str, Any]:
        kmes: list[dict[str, Any]] = [{"id": HUB_KME, "saes": [HUB_SAE]}]
        for k in range(self.remotes):
            kmes.append({"id": f"KME_R{k}", "saes": [_sae(i) for i in range(self.peers)
                                                     if self.remote_of(i) == k]})
        need_bps = self.peers * KEY_BITS / self.rekey_interval_s
        return {
            "name": "scale-madqci",
            "kmes": kmes,
            # The pairs that key (master, slave): the hub's N, not every pair of N SAEs
            # (which the simulator would derive, 50 million of them for 10,000).
            "pairs": [[HUB_SAE, _sae(i)] if i % 2 == 0 else [_sae(i), HUB_SAE]
                      for i in range(self.peers)],
            # As madqci: one time-shared MDI-QKD hub, one pool for every pair. Its rate
            # and size are sized to the load (4x an interval's keys), so the bench
            # measures the gateway and not a starved link.
            "links": [{"id": "hub-mdi", "kind": "mdi_hub", "hub": "HUB_NODE",
                       "ends": [k["id"] for k in kmes], "distance_km": 40, "shared": True,
                       "rate_bps": int(need_bps * 4) + 1,
                       "capacity_bits": max(1 << 20, self.peers * KEY_BITS * 4)}],
        }

    def _start_simulator(self) -> None:
        state = self.workdir / "kme-sim"
        state.mkdir(mode=0o700, exist_ok=True)
        topo = self.workdir / "topology.yaml"
        topo.write_text(yaml.dump(self.topology(), Dumper=_Dumper, sort_keys=False))
        log = (self.workdir / "kme-sim.log").open("wb")
        sim = self.lab.popen(self.ns, [*self._cpus("load"), sys.executable, "-m",
                                       "gateway.cli", "kme-sim",
                                       "--topology", str(topo), "--state-dir", str(state),
                                       "--base-port", str(KME_BASE_PORT)],
                             stdout=log, stderr=subprocess.STDOUT)
        self.sim_proc = sim
        endpoints = state / "endpoints.json"
        deadline = time.monotonic() + 60 + self.peers / 100  # the PKI: a certificate per SAE
        while not endpoints.exists():
            if sim.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "kme-sim.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"KME simulator did not start: {tail}")
            time.sleep(0.2)
        time.sleep(0.2)
        self.endpoints = json.loads(endpoints.read_text())

    def _identities(self) -> None:
        hub = LocalIdentity.generate()
        hub.save(self.workdir / "hub" / "identity")
        self.hub_identity = hub.public.to_text()
        ids = self.workdir / "remote-ids"
        ids.mkdir(mode=0o700, exist_ok=True)
        self.peer_docs = []
        for i in range(self.peers):
            ident = LocalIdentity.generate()
            ident.save(ids / peer_id(i))
            self.peer_docs.append(self.peer_doc(i, ident.public.to_text()))

    def peer_doc(self, i: int, identity: str) -> dict[str, Any]:
        return {
            "id": peer_id(i),
            "sae_id": _sae(i),
            "control": f"{peer_address(i)}:{REMOTE_PORT + self.remote_of(i)}",
            "identity": identity,
            "role": "initiator" if i % 2 == 0 else "responder",
            "rekey_interval_s": self.rekey_interval_s,
            "key_lifetime_s": self.key_lifetime_s,
            "tunnel": {"type": "wireguard", "manage": "psk-only", "interface": self.ifname,
                       "peer_public_key": base64.b64encode(_wg_public(i)).decode(),
                       # No remote WireGuard here: nothing would ever make the tunnel live.
                       "liveness_s": 3600},
        }

    def _start_wireguard(self) -> None:
        import asyncio

        log = (self.workdir / "wireguard-go.log").open("wb")
        self.wg_proc = self.lab.popen(self.ns, [*self._cpus("hub"), "env",
                                                "WG_PROCESS_FOREGROUND=1", "wireguard-go",
                                                self.ifname],
                                      stdout=log, stderr=subprocess.STDOUT)
        client = UapiClient(self.ifname, timeout_s=120.0)
        lines = [f"private_key={secrets.token_hex(32)}"]
        for i in range(self.peers):
            lines += [f"public_key={_wg_public(i).hex()}",
                      f"preshared_key={secrets.token_hex(32)}"]

        async def setup() -> None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.get()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            t0 = time.perf_counter()
            await client.set(lines)  # the interface's N peers, one UAPI transaction
            self.figures["uapi_set_all_peers_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            dev = await client.get()
            self.figures["uapi_get_all_peers_ms"] = (time.perf_counter() - t0) * 1e3
            if len(dev.peers) != self.peers:
                raise RuntimeError(f"wireguard-go holds {len(dev.peers)} peers, not {self.peers}")

        asyncio.run(setup())

    # ------------------------------------------------------------------ hub config

    def hub_config(self, peers: list[dict[str, Any]]) -> dict[str, Any]:
        sae = self.endpoints["saes"][HUB_SAE]
        kme = self.endpoints["kmes"][HUB_KME]
        hub = self.workdir / "hub"
        return {
            "gateway": {"id": HUB_ID, "identity_dir": str(hub / "identity"),
                        "state_dir": str(hub / "state"),
                        "status_socket": str(self.status_socket)},
            # A hub's handshakes in flight (rate x latency) outgrow the default 128
            # connections in a burst; above it, new ones are evicted (docs/operations.md).
            "control": {"listen": f"127.0.0.1:{CONTROL_PORT}", "max_connections": 1024},
            "kme": {"sae_id": HUB_SAE, "endpoints": [{"url": kme["url"], "kme_id": HUB_KME}],
                    "ca_file": kme["ca"], "cert_file": sae["cert"], "key_file": sae["key"]},
            "peers": peers,
            "telemetry": {"logging": {"level": "info", "format": "json"},
                          "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"},
                          "audit": {}},
        }

    def write_config(self, extra_peers: int = 0) -> None:
        peers = list(self.peer_docs)
        for j in range(extra_peers):  # a peer no remote process serves (the SIGHUP figure)
            peers.append(self.peer_doc(self.peers + j, LocalIdentity.generate().public.to_text()))
        doc = self.hub_config(peers)
        if self.peers_dir:
            directory = self.config_path.parent / "peers.d"
            directory.mkdir(exist_ok=True)
            for peer in peers:  # an existing file is left as it is, as an operator would
                path = directory / f"{peer['id']}.yaml"
                if not path.exists():
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(yaml.dump(peer, Dumper=_Dumper, sort_keys=False))
                    os.replace(tmp, path)
            doc["peers"], doc["peers_dir"] = [], "peers.d"
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
        os.replace(tmp, self.config_path)

    # ------------------------------------------------------------------ processes

    def start_hub(self) -> subprocess.Popen[bytes]:
        log = self.log_path.open("ab")
        # QSGW_SCALE_PROFILE=FILE: the hub runs under cProfile (stats written at its exit).
        profile = os.environ.get("QSGW_SCALE_PROFILE")
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        self.hub = self.lab.popen(self.ns, [*self._cpus("hub"), sys.executable, *prof, "-m",
                                            "gateway.cli", "run", "-c", str(self.config_path)],
                                  stdout=log, stderr=subprocess.STDOUT)
        return self.hub

    def start_remotes(self) -> None:
        sae_files = self.endpoints["saes"]
        for k in range(self.remotes):
            kme = self.endpoints["kmes"][f"KME_R{k}"]
            peers = []
            for i in range(self.peers):
                if self.remote_of(i) != k:
                    continue
                sae = _sae(i)
                peers.append({"id": peer_id(i), "sae_id": sae, "address": peer_address(i),
                              "initiates": i % 2 == 1,
                              "identity_dir": str(self.workdir / "remote-ids" / peer_id(i)),
                              "cert": sae_files[sae]["cert"], "key": sae_files[sae]["key"]})
            spec = {"hub_id": HUB_ID, "hub_identity": self.hub_identity, "hub_sae_id": HUB_SAE,
                    "hub_host": "127.0.0.1", "hub_port": CONTROL_PORT,
                    "kme_url": kme["url"], "kme_id": f"KME_R{k}", "ca": kme["ca"],
                    "listen_port": REMOTE_PORT + k, "rekey_interval_s": self.rekey_interval_s,
                    "warmup_s": self.warmup_s, "peers": peers,
                    "ready_file": str(self.workdir / f"remote{k}.ready"),
                    "go_file": str(self.go_file)}
            path = self.workdir / f"remote{k}.json"
            path.write_text(json.dumps(spec))
            log = (self.workdir / f"remote{k}.log").open("wb")
            self.remote_procs.append(self.lab.popen(
                self.ns, [*self._cpus("load"), sys.executable, "-m", "qsgw_lab.remote_peers",
                          str(path)],
                stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60 + self.peers / 200
        for k, proc in enumerate(self.remote_procs):
            while not (self.workdir / f"remote{k}.ready").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.workdir / f"remote{k}.log").read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"remote peers {k} did not start: {tail}")
                time.sleep(0.2)

    def stop_remotes(self) -> dict[str, dict[str, Any]]:
        """SIGTERM the remote processes; what each remote peer did, by peer ID."""
        for proc in self.remote_procs:
            if proc.poll() is None:
                proc.terminate()
        out: dict[str, dict[str, Any]] = {}
        for k, proc in enumerate(self.remote_procs):
            proc.wait(60)
            result = json.loads((self.workdir / f"remote{k}.result.json").read_text())
            out.update(result["peers"])
            for kind, n in result["errors"].items():
                self.remote_errors[kind] = self.remote_errors.get(kind, 0) + n
            for kind, n in result["cut_at_stop"].items():
                self.remote_cut[kind] = self.remote_cut.get(kind, 0) + n
        self.remote_procs = []
        return out

    def stop_hub(self) -> int | None:
        if self.hub is None:
            return None
        if self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(120)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait(10)
        code = self.hub.returncode
        self.hub = None
        return code

    def log_records(self) -> Iterator[dict[str, Any]]:
        """The hub daemon's JSON log lines."""
        with self.log_path.open(errors="replace") as fh:
            for line in fh:
                if line.startswith("{"):
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue


def _sae(i: int) -> str:
    return f"SAE_{peer_id(i).upper()}"


def _wg_public(i: int) -> bytes:
    """Peer i's WireGuard public key: any 32 bytes do for wireguard-go, none is ever used."""
    return i.to_bytes(4, "big") + b"\x5a" * 28
