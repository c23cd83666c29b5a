"""Tunnel liveness with real daemons: `ok` means keyed *and* carrying traffic.

A healthy WireGuard tunnel is `ok` with rising counters; one whose peer public key
is wrong, and an IPsec tunnel whose IKE is dropped by nftables, are `down` with the
tunnel_down alarm, spend no more QKD keys than a healthy tunnel, and recover when
fixed; under `required` a down tunnel blocks after its key lifetime.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest
from _requires import require

from qsgw_lab.sitelab import Site, SiteLab, Tunnel

pytestmark = pytest.mark.netns

LIVENESS_S = 4.0
WG_REKEY_TIMEOUT_S = 5.0  # WireGuard's wait before it retries a handshake


def _sites(sites: SiteLab, kind: str, policy: str, rekey: float, lifetime: float
           ) -> tuple[Site, Site, Tunnel]:
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    add = sites.add_ipsec_tunnel if kind == "ipsec" else sites.add_wireguard_tunnel
    t = add(a, b, policy, rekey, lifetime)
    for s in (a, b):
        s.peers[0]["tunnel"]["liveness_s"] = LIVENESS_S
    return a, b, t


def _start(sites: SiteLab, *order: Site) -> None:
    sites.start_simulator()
    for s in order:
        sites.write_config(s)
        sites.start_daemon(s)


def _peer(sites: SiteLab, site: Site, peer: Site) -> dict[str, Any]:
    return sites.peer_status(site, peer.gateway_id) or {}


def _state(sites: SiteLab, site: Site, peer: Site) -> str | None:
    return _peer(sites, site, peer).get("state")


def _alarms(sites: SiteLab, site: Site) -> set[tuple[str, str]]:
    doc = sites.status(site) or {}
    return {(a["alarm"], a["subject"]) for a in doc.get("alarms", [])}


def _keys_for(sites: SiteLab, sae_id: str) -> int:
    return len(sites.delivered(sae_id))


def test_healthy_wireguard_is_ok_with_rising_counters(sitelab: SiteLab) -> None:
    a, b, t = _sites(sitelab, "wireguard", "required", 3.0, 10.0)
    _start(sitelab, a, b)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok"
                            and _state(sitelab, b, a) == "ok", 40), \
        (_peer(sitelab, a, b), _peer(sitelab, b, a))
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15)
    first = _peer(sitelab, a, b)
    assert first["tunnel_live"] == "live" and first["rx_bytes"] is not None
    sitelab.lab.run(a.name, ["ping", "-c", "20", "-i", "0.05", "-W", "1", t.ip_b], timeout=20)
    assert sitelab.wait_for(lambda: (_peer(sitelab, a, b).get("rx_bytes") or 0)
                            > first["rx_bytes"] + 20 * 84, 10), "counters did not rise"
    assert _state(sitelab, a, b) == "ok"
    assert ("tunnel_down", b.gateway_id) not in _alarms(sitelab, a)


def test_a_quiet_wireguard_tunnel_handshakes_on_its_key_without_traffic(
        sitelab: SiteLab) -> None:
    # No keepalive and no traffic: nothing but qsgw starts a handshake. (WireGuard's
    # own retries end 90 s after a failed one, so a tunnel blocked longer than that,
    # e.g. between satellite passes, is in the same place when its next key comes.)
    a, b, _t = _sites(sitelab, "wireguard", "required", 3.0, 10.0)
    for s in (a, b):
        s.peers[0]["tunnel"]["persistent_keepalive_s"] = 0
    _start(sitelab, a, b)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok"
                            and _state(sitelab, b, a) == "ok", 40), \
        (_peer(sitelab, a, b), _peer(sitelab, b, a))
    assert _peer(sitelab, a, b)["last_handshake_age_s"] is not None
    assert ("tunnel_down", b.gateway_id) not in _alarms(sitelab, a)
    # qsgw's prompt made it, not WireGuard's retry 5 s (REKEY_TIMEOUT) after a failed
    # one: a responder that started the handshake before its peer held the key had it
    # fail, and held the peer's own back for those 5 s (at a fast rekey, for good).
    first_key = min(_first_install(s) for s in (a, b))
    age = _peer(sitelab, a, b)["last_handshake_age_s"]
    handshake_at = time.time() - age
    assert handshake_at - first_key < WG_REKEY_TIMEOUT_S, (
        f"first data-plane handshake {handshake_at - first_key:.1f} s after the first key")


def _first_install(site: Site) -> float:
    """When the site's daemon installed its first epoch key (its log's clock)."""
    for line in site.log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # not a log record (e.g. a Python warning)
        if str(rec.get("msg", "")).startswith("epoch ") and " installed in " in rec["msg"]:
            return datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{site.name}: no epoch installed in {site.log_path}")


def test_wireguard_wrong_peer_key_is_down_spends_no_more_keys_and_recovers(
        sitelab: SiteLab) -> None:
    rekey = 3.0
    a, b, t = _sites(sitelab, "wireguard", "preferred", rekey, 10.0)
    right_key = a.peers[0]["tunnel"]["peer_public_key"]
    a.peers[0]["tunnel"]["peer_public_key"] = _stranger_key()
    _start(sitelab, b, a)

    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "down", 40), _peer(sitelab, a, b)
    doc = _peer(sitelab, a, b)
    assert doc["epoch"] >= 1, "the control plane keys it: the data plane is what fails"
    assert "no data-plane handshake" in doc["tunnel_detail"]
    assert ("tunnel_down", b.gateway_id) in _alarms(sitelab, a)
    text = subprocess.run([*_qsgw(), "status", "-s", str(a.status_socket)], capture_output=True,
                          text=True, timeout=10).stdout
    assert "tunnel down:" in text and "ALARM tunnel_down" in text

    # Keys spent while broken: no more than a healthy tunnel's, one per rekey interval.
    before, started = _keys_for(sitelab, a.sae_id), time.monotonic()
    time.sleep(15)
    spent = _keys_for(sitelab, a.sae_id) - before
    healthy = (time.monotonic() - started) / rekey + 2  # + the epoch in flight, a prefetch
    assert spent <= healthy, f"{spent} QKD keys in 15 s, a healthy tunnel uses {healthy:.0f}"

    a.peers[0]["tunnel"]["peer_public_key"] = right_key
    sitelab.write_config(a)
    sitelab.signal_daemon(a, signal.SIGHUP)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok", 40), _peer(sitelab, a, b)
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15)
    assert sitelab.wait_for(lambda: ("tunnel_down", b.gateway_id) not in _alarms(sitelab, a), 10)


def test_required_down_tunnel_blocks_after_its_key_lifetime(sitelab: SiteLab) -> None:
    a, b, _t = _sites(sitelab, "wireguard", "required", 2.0, 6.0)
    a.peers[0]["tunnel"]["peer_public_key"] = _stranger_key()
    _start(sitelab, b, a)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "down", 40), _peer(sitelab, a, b)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "blocked", 6.0 + 15), \
        _peer(sitelab, a, b)
    assert "tunnel down for longer than the key lifetime" in _peer(sitelab, a, b)["last_error"]


def test_ipsec_with_ike_dropped_is_down_then_recovers(sitelab: SiteLab) -> None:
    require("charon", "unshare", "nft")
    rekey = 3.0
    a, b, t = _sites(sitelab, "ipsec", "preferred", rekey, 10.0)
    # IKE (UDP 500/4500) into B is dropped by nftables in B's namespace.
    for rule in (["add", "table", "inet", "qsgwtest"],
                 ["add", "chain", "inet", "qsgwtest", "input",
                  "{ type filter hook input priority 0 ; }"],
                 ["add", "rule", "inet", "qsgwtest", "input", "udp", "dport", "{ 500, 4500 }",
                  "drop"]):
        sitelab.lab.run(b.name, ["nft", *rule], check=True)
    _start(sitelab, b, a)

    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "down", 60), _peer(sitelab, a, b)
    # The cause is named once the first attempt has failed (charon's timeout).
    def cause() -> str:
        doc = _peer(sitelab, a, b)
        return (doc.get("last_error") or "") + (doc.get("tunnel_detail") or "")

    assert sitelab.wait_for(lambda: "UDP 500/4500" in cause(), 40), cause()
    doc = _peer(sitelab, a, b)
    assert doc["state"] == "down", doc
    assert "PPK or PSK mismatch with the peer shows" not in (doc["last_error"] or "")
    assert ("tunnel_down", b.gateway_id) in _alarms(sitelab, a)

    before, started = _keys_for(sitelab, a.sae_id), time.monotonic()
    time.sleep(15)
    spent = _keys_for(sitelab, a.sae_id) - before
    healthy = (time.monotonic() - started) / rekey + 2
    assert spent <= healthy, f"{spent} QKD keys in 15 s, a healthy tunnel uses {healthy:.0f}"

    sitelab.lab.run(b.name, ["nft", "delete", "table", "inet", "qsgwtest"], check=True)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok"
                            and _state(sitelab, b, a) == "ok", 90), \
        (_peer(sitelab, a, b), _peer(sitelab, b, a))
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15)


def _qsgw() -> list[str]:
    from qsgw_lab.sitelab import qsgw_argv

    return qsgw_argv()


def _stranger_key() -> str:
    """A valid WireGuard public key that belongs to no one here."""
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True)
    return subprocess.run(["wg", "pubkey"], input=private.stdout, capture_output=True,
                          text=True, check=True).stdout.strip()
