"""Two appliances under qemu keyed by qsgw over kernel WireGuard (pyroute2's netlink driver).

What an operator would check on a pair of gateways: both daemons are up
(READY through sd_notify), each `qsgw status` shows epochs, after three or more
rotations both ends hold the same preshared key (seen by its SHA-256 fingerprint
over the report channel), a new one every epoch, and a ping across the tunnel
keeps going; the firewall refuses the control port to a non-peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qsgw_lab.sitelab import CONTROL_PORT, KME_NS
from qsgw_lab.vm import Report
from qsgw_lab.vmsites import (
    INNER,
    WAN,
    Files,
    VmPair,
    lost_since,
    peer_of,
    wireguard_full,
    wireguard_psk_only,
)

pytestmark = [pytest.mark.netns, pytest.mark.vm]

BOOT_S = 240.0  # TCG on two shared cores: power-on to READY takes a minute or more
ROTATIONS = 3


def _ready(rep: Report) -> bool:
    p = peer_of(rep)
    return rep["units"]["qsgw.service"] == "active" and p is not None and p["state"] == "ok"


def _psk(rep: Report) -> str | None:
    fps = list((rep.get("psk_sha256") or {}).get("wg0", {}).values())
    return fps[0] if fps else None


def _rotations(pair: VmPair, tunnel: Callable[[int, dict[str, str]],
                                              tuple[dict[str, Any], Files]]) -> None:
    pair.start_simulator()
    pair.provision(tunnel, report=({"ping": [INNER[1]], "ping_interval_s": 0.5}, {}))
    pair.start()
    a = pair.vms[0]
    live_from = 0  # a's ping sequence number once its tunnel was first live
    for vm in pair.vms:
        rep = vm.wait_report(_ready, BOOT_S, "READY with a keyed, live tunnel")
        assert rep["mounts"]["/"].startswith("squashfs ro"), rep["mounts"]
        # READY on its first start: not a start systemd timed out and restarted
        assert "NRestarts=0" in rep["qsgw_unit"], rep["qsgw_unit"]
        if vm is a:
            live_from = int(rep["ping"][INNER[1]]["sent"])
    # epoch -> PSK fingerprint, as each end reported it (a report read across a
    # rotation carries none: its fingerprints and status would be of two epochs)
    seen: list[dict[int, str]] = [{}, {}]

    def collect() -> bool:
        for i, vm in enumerate(pair.vms):
            for rep in vm.poll():
                p, fp = peer_of(rep), _psk(rep)
                if p is not None and fp is not None and p["state"] == "ok":
                    seen[i].setdefault(int(p["epoch"]), fp)
        common = set(seen[0]) & set(seen[1])
        return len(common) >= ROTATIONS + 1

    assert pair.sites.wait_for(collect, timeout_s=60 + 20 * ROTATIONS, interval_s=1), seen
    common = sorted(set(seen[0]) & set(seen[1]))
    for epoch in common:
        assert seen[0][epoch] == seen[1][epoch], f"epoch {epoch}: the ends' PSKs differ"
    fps = [seen[0][e] for e in common]
    assert len(set(fps)) == len(fps), "a PSK came back in a later epoch"
    ping = a.latest()["ping"][INNER[1]]  # type: ignore[index]
    assert ping["received"] > 20, ping
    # Rotation is make-before-break: the ping does not notice it. Pings sent while the
    # tunnel first came up (the first handshakes meet one end still on the last
    # epoch's PSK, and WireGuard retries after 5 s) are not the rotations' to count.
    lost = lost_since(ping, live_from)
    assert len(lost) <= 1, (lost, live_from, ping)
    # The firewall: the control port answers the peer (the epochs above), not others.
    assert _connect(pair, "198.51.100.99", WAN[0], CONTROL_PORT) == "timeout"


def _connect(pair: VmPair, source: str, host: str, port: int) -> str:
    """A TCP connection from the host side: connected, refused or timeout."""
    script = ("import socket\ns = socket.socket(); s.settimeout(4)\n"
              f"s.bind(({source!r}, 0))\n"
              f"try:\n    s.connect(({host!r}, {port})); print('connected')\n"
              "except TimeoutError: print('timeout')\n"
              "except ConnectionRefusedError: print('refused')\n")
    res = pair.lab.run(KME_NS, ["python3", "-c", script], timeout=15)
    return res.stdout.strip()


def test_kernel_wireguard_full(pair: VmPair) -> None:
    _rotations(pair, wireguard_full)


def test_kernel_wireguard_psk_only(pair: VmPair) -> None:
    _rotations(pair, wireguard_psk_only)
