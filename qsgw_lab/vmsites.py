"""Two qsgw appliances under qemu, keyed through the KME simulator: the VM test's lab.

The simulator runs as in every site lab (SiteLab: a "kme" namespace on the
bridge of the "core" namespace, 198.51.100.250, mTLS); the two VMs' taps join
that bridge as 198.51.100.11 and .12. Each VM is provisioned from its own
config drive: gateway.yaml (paths inside the appliance), its identity from
`qsgw keygen`, the SAE certificate the simulator issued, WireGuard keys, the
systemd-networkd files of its network, and report.json (what its report
channel pings). close() stops the VMs; the NetnsLab removes the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qsgw_lab.netns import NetnsLab
from qsgw_lab.sitelab import CONTROL_PORT, KME_NS, SiteLab, qsgw_argv
from qsgw_lab.vm import REPO, ApplianceVM, Report

__all__ = ["TOPOLOGY", "VmPair", "lost_since", "peer_of"]

TOPOLOGY = REPO / "configs" / "topologies" / "beqci.yaml"
SAES = ("SAE_UGENT_A_GW", "SAE_UGENT_B_GW")
WAN = ("198.51.100.11", "198.51.100.12")
INNER = ("203.0.113.1", "203.0.113.2")
WG_PORT = 51820
Files = dict[str, tuple[bytes, int]]


def _wg_keypair() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                            check=True, timeout=10).stdout.strip()
    return private, public


def peer_of(report: Report) -> dict[str, Any] | None:
    """The one peer of a report's `qsgw status` document."""
    peers = (report.get("status") or {}).get("peers") or []
    return peers[0] if peers else None


def lost_since(ping: dict[str, Any], seq: int) -> list[int]:
    """The ping's lost sequence numbers after `seq` (the tunnel's bring-up is not a
    rotation: pass the count sent when it was first live)."""
    return [s for s in ping["lost_seqs"] if s > seq]


class VmPair:
    """Gateways A and B (A initiates: the lower gateway ID), one tunnel between them."""

    def __init__(self, lab: NetnsLab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.sites = SiteLab(lab, workdir, TOPOLOGY)
        self.sites._core()  # the bridge and the KME namespace, without any site namespace
        self.ns = lab.ns_name("core")
        self.vms = [ApplianceVM(lab, self.ns, name, workdir, i + 1)
                    for i, name in enumerate(("gw-a", "gw-b"))]
        self._identity: list[tuple[Files, str]] = []

    def start_simulator(self) -> None:
        self.sites.start_simulator()
        # The host side's own address on the WAN: a non-peer, for the firewall check.
        self.lab.add_address(KME_NS, "eth0", "198.51.100.99/24")

    def _identities(self) -> list[tuple[Files, str]]:
        if not self._identity:
            for vm in self.vms:
                out_dir = vm.dir / "identity"
                res = subprocess.run(qsgw_argv("keygen", "--out", str(out_dir)),
                                     capture_output=True, text=True, check=True, timeout=120)
                text = next(line.strip() for line in res.stdout.splitlines()
                            if line.strip().startswith("qsgw-id"))
                files = {f"identity/{p.name}": (p.read_bytes(), p.stat().st_mode & 0o777)
                         for p in sorted(out_dir.iterdir()) if p.is_file()}
                self._identity.append((files, text))
        return self._identity

    def provision(self, tunnel: Callable[[int, dict[str, str]], tuple[dict[str, Any], Files]],
                  rekey_interval_s: float = 8.0, key_lifetime_s: float = 40.0,
                  report: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> None:
        """Config drives and fresh state disks for both VMs. `tunnel(i, wg)` gives VM i's
        `tunnel:` entry and its extra files, `wg` holding both WireGuard key pairs."""
        ids = self._identities()
        ends = self.sites.endpoints
        keys = [_wg_keypair() for _ in self.vms]
        wg = {"private0": keys[0][0], "public0": keys[0][1],
              "private1": keys[1][0], "public1": keys[1][1], "ike_psk": secrets.token_hex(32)}
        for i, vm in enumerate(self.vms):
            j = 1 - i
            sae = ends["saes"][SAES[i]]
            kme = ends["kmes"][sae["kme"]]
            tun, extra = tunnel(i, wg)
            doc = {
                "gateway": {"id": vm.name, "identity_dir": "/etc/qsgw/identity",
                            "state_dir": "/var/lib/qsgw"},
                "control": {"listen": f"{WAN[i]}:{CONTROL_PORT}"},
                "kme": {"sae_id": SAES[i],
                        "endpoints": [{"url": kme["url"], "kme_id": sae["kme"]}],
                        "ca_file": "/etc/qsgw/kme/ca.pem", "cert_file": "/etc/qsgw/kme/sae.pem",
                        "key_file": "/etc/qsgw/kme/sae.key", "timeout_s": 5},
                "peers": [{"id": self.vms[j].name, "sae_id": SAES[j],
                           "control": f"{WAN[j]}:{CONTROL_PORT}", "identity": ids[j][1],
                           "qkd": "required", "rekey_interval_s": rekey_interval_s,
                           "key_lifetime_s": key_lifetime_s,
                           "retry_backoff_s": {"initial": 1, "max": 4}, "tunnel": tun}],
                "telemetry": {"logging": {"level": "info", "format": "json"}},
            }
            network = (f"[Match]\nMACAddress={vm.mac}\n\n[Network]\nAddress={WAN[i]}/24\n"
                       "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
            files: Files = {
                "gateway.yaml": (yaml.safe_dump(doc, sort_keys=False).encode(), 0o640),
                "kme/ca.pem": (Path(kme["ca"]).read_bytes(), 0o644),
                "kme/sae.pem": (Path(sae["cert"]).read_bytes(), 0o644),
                "kme/sae.key": (Path(sae["key"]).read_bytes(), 0o600),
                "network/10-wan.network": (network.encode(), 0o644),
                "report.json": (json.dumps(report[i]).encode(), 0o644),
                **ids[i][0], **extra,
            }
            vm.make_config_drive(files)
            vm.make_state_disk()

    def start(self) -> None:
        for vm in self.vms:
            vm.start()

    def close(self) -> None:
        for vm in self.vms:
            with contextlib.suppress(Exception):  # best effort; the lab removes the namespace
                vm.stop()
        self.sites.close()


def wireguard_full(i: int, wg: dict[str, str]) -> tuple[dict[str, Any], Files]:
    """Kernel WireGuard made and keyed by qsgw (pyroute2), manage: full."""
    j = 1 - i
    return ({"type": "wireguard", "driver": "kernel", "manage": "full", "interface": "wg0",
             "private_key_file": "/etc/qsgw/wg/wg0.key", "listen_port": WG_PORT,
             "addresses": [f"{INNER[i]}/30"], "peer_public_key": wg[f"public{j}"],
             "endpoint": f"{WAN[j]}:{WG_PORT}", "allowed_ips": [f"{INNER[j]}/32"],
             "persistent_keepalive_s": 5, "liveness_s": 20},
            {"wg/wg0.key": ((wg[f"private{i}"] + "\n").encode(), 0o600)})


def wireguard_psk_only(i: int, wg: dict[str, str]) -> tuple[dict[str, Any], Files]:
    """Kernel WireGuard made by systemd-networkd (a .netdev on the config drive);
    qsgw only sets the peer's preshared key (manage: psk-only)."""
    j = 1 - i
    netdev = (f"[NetDev]\nName=wg0\nKind=wireguard\n\n[WireGuard]\nPrivateKey={wg[f'private{i}']}\n"
              f"ListenPort={WG_PORT}\n\n[WireGuardPeer]\nPublicKey={wg[f'public{j}']}\n"
              f"Endpoint={WAN[j]}:{WG_PORT}\nAllowedIPs={INNER[j]}/32\nPersistentKeepalive=5\n")
    network = f"[Match]\nName=wg0\n\n[Network]\nAddress={INNER[i]}/30\n"
    return ({"type": "wireguard", "driver": "kernel", "manage": "psk-only", "interface": "wg0",
             "peer_public_key": wg[f"public{j}"], "listen_port": WG_PORT,
             "endpoint": f"{WAN[j]}:{WG_PORT}", "allowed_ips": [f"{INNER[j]}/32"],
             "liveness_s": 20},
            {"network/20-wg0.netdev": (netdev.encode(), 0o600),
             "network/20-wg0.network": (network.encode(), 0o644)})


def env_prefix() -> str:
    """The namespace prefix of the VM labs."""
    return os.environ.get("QSGW_VM_NETNS_PREFIX", "v17")


def ipsec_esp(i: int, wg: dict[str, str]) -> tuple[dict[str, Any], Files]:
    """Kernel ESP: charon-systemd (kernel-netlink) keyed by qsgw over VICI, the epoch
    key as RFC 8784 PPK; the inner addresses on a dummy interface (systemd-networkd)."""
    j = 1 - i
    netdev = "[NetDev]\nName=inner0\nKind=dummy\n"
    network = f"[Match]\nName=inner0\n\n[Network]\nAddress={INNER[i]}/32\n"
    return ({"type": "ipsec", "manage": "full", "connection": "qsgw-esp", "ppk_id": "qsgw-esp-ppk",
             "local_addrs": [WAN[i]], "remote_addrs": [WAN[j]],
             "local_ts": [f"{INNER[i]}/32"], "remote_ts": [f"{INNER[j]}/32"],
             "auth": {"psk_file": "/etc/qsgw/ike.psk"}, "liveness_s": 20},
            {"ike.psk": (wg["ike_psk"].encode(), 0o600),
             "network/30-inner0.netdev": (netdev.encode(), 0o644),
             "network/30-inner0.network": (network.encode(), 0o644)})


def ipsec_route_based(i: int, wg: dict[str, str]) -> tuple[dict[str, Any], Files]:
    """Kernel ESP, route-based: qsgw creates the XFRM interface (pyroute2, if_id 17)
    with the inner address and a route to the peer's; the CHILD_SA is bound to it."""
    j = 1 - i
    tunnel, files = ipsec_esp(i, wg)
    tunnel["connection"] = "qsgw-vti"
    tunnel["ppk_id"] = "qsgw-vti-ppk"
    tunnel["xfrm_interface"] = {"name": "ipsec0", "if_id": 17,
                                "addresses": [f"{INNER[i]}/32"],
                                "routes": [f"{INNER[j]}/32"]}
    return tunnel, {"ike.psk": files["ike.psk"]}
