"""Two and three gateway sites in namespaces: the daemon as an operator sees it."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from qsgw_lab.sitelab import Site, SiteLab

from .conftest import two_sites

pytestmark = pytest.mark.netns


def _epoch(sites: SiteLab, site: Site, peer: str) -> int:
    st = sites.peer_status(site, peer)
    return -1 if st is None else int(st["epoch"])


def _wait_epoch(sites: SiteLab, a: Site, b: Site, at_least: int, timeout_s: float) -> int:
    """Wait until both sides report the same epoch >= at_least; return it."""
    result = {"epoch": -1}

    def ready() -> bool:
        ea, eb = _epoch(sites, a, b.gateway_id), _epoch(sites, b, a.gateway_id)
        result["epoch"] = ea
        return ea == eb and ea >= at_least

    assert sites.wait_for(ready, timeout_s), (
        f"epochs did not reach {at_least} on both sides within {timeout_s} s: "
        f"{sites.peer_status(a, b.gateway_id)} / {sites.peer_status(b, a.gateway_id)}")
    return result["epoch"]


def _journal_key_ids(site: Site) -> list[tuple[str, int]]:
    db = sqlite3.connect(site.dir / "state" / "journal.db")
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT key_id, epoch FROM key_ids")]
    finally:
        db.close()


def _made_epochs(site: Site) -> list[dict[str, Any]]:
    """The site's audited made epochs (<state_dir>/audit.jsonl; complete lines only)."""
    out = []
    for line in (site.dir / "state" / "audit.jsonl").read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written
        if rec.get("type") == "epoch" and rec.get("outcome") == "made":
            out.append(rec)
    return out


def _continuous_ping(sites: SiteLab, site: Site, address: str, seconds: float
                     ) -> subprocess.Popen[str]:
    count = int(seconds / 0.1)
    return sites.lab.popen(site.name, ["ping", "-n", "-i", "0.1", "-W", "1", "-c", str(count),
                                       address], stdout=subprocess.PIPE, text=True)


def _ping_loss(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, int]:
    out, _ = proc.communicate(timeout=timeout_s)
    for line in out.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            sent = int(parts[0].split()[0])
            received = int(parts[1].split()[0])
            return sent, received
    raise AssertionError(f"no ping summary in: {out[-300:]}")


def test_rotations_keep_traffic_and_match_psks(sitelab: SiteLab) -> None:
    a, b = two_sites(sitelab, rekey=2.0, lifetime=8.0)
    t = sitelab.tunnels[0]
    first = _wait_epoch(sitelab, a, b, 1, 40)
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15), "no traffic across the tunnel"

    ping = _continuous_ping(sitelab, a, t.ip_b, seconds=25)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 45
    while len(seen) < 10 and time.monotonic() < deadline:
        # The next epoch after the last one seen (epochs may pass while reading).
        epoch = _wait_epoch(sitelab, a, b, max(seen, default=first - 1) + 1, 20)
        psk_a = sitelab.preshared_key(a, t.if_a)
        psk_b = sitelab.preshared_key(b, t.if_b)
        if epoch != _epoch(sitelab, a, b.gateway_id):
            continue  # rotated again while reading: read the next one
        assert psk_a is not None and psk_a != "(none)"
        assert psk_a == psk_b, f"epoch {epoch}: the two sides hold different preshared keys"
        assert psk_a not in seen.values(), f"epoch {epoch} reused an earlier preshared key"
        seen[epoch] = psk_a
    assert len(seen) >= 10, f"only {len(seen)} rotations observed"
    sent, received = _ping_loss(ping, 40)
    assert sent > 100 and received == sent, f"lost {sent - received} of {sent} pings over rotations"

    # A fresh WireGuard handshake with the latest key: remove and re-add the peer.
    peer_pub = sitelab.lab.run(b.name, ["wg", "show", t.if_b, "public-key"], check=True).stdout
    psk_file = a.dir / "psk.check"
    psk_file.write_text(sitelab.preshared_key(a, t.if_a) or "")
    sitelab.lab.run(a.name, ["wg", "set", t.if_a, "peer", peer_pub.strip(), "remove"], check=True)
    sitelab.lab.run(a.name, ["wg", "set", t.if_a, "peer", peer_pub.strip(), "preshared-key",
                             str(psk_file), "endpoint", f"{b.underlay_ip}:{51821}",
                             "allowed-ips", f"{t.ip_b}/32"], check=True)
    psk_file.unlink()
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15), \
        "a fresh WireGuard handshake failed after rotations"


def test_no_qkd_key_is_used_twice(sitelab: SiteLab) -> None:
    a, b = two_sites(sitelab, rekey=1.5, lifetime=8.0)
    _wait_epoch(sitelab, a, b, 5, 60)
    delivered = sitelab.delivered("SAE_INTA_GW")
    time.sleep(0.5)
    ja, jb = _journal_key_ids(a), _journal_key_ids(b)
    ids_a = [k for k, _ in ja]
    ids_b = [k for k, _ in jb]
    assert len(set(ids_a)) == len(ids_a) and len(set(ids_b)) == len(ids_b)
    # Every key the master received is journalled once by the master, except at
    # most the one it prefetched for the next epoch (not used yet)...
    assert set(ids_a) <= set(delivered), "the master journalled a key it never received"
    assert len(set(delivered) - set(ids_a)) <= 1, "keys delivered to the master went unused"
    # ...each against exactly one epoch, and the slave consumed the same ones.
    epochs = [e for _, e in ja]
    assert len(set(epochs)) == len(epochs)
    assert set(ids_b) <= set(ids_a)
    assert len(ids_b) >= len(ids_a) - 1  # at most the one in flight

    # Both ends audit where each key came from: MadQCI's untrusted MDI hub, no relay
    # (the master from enc_keys, most of them prefetched; the slave from dec_keys).
    for site in (a, b):
        made = _made_epochs(site)
        assert len(made) >= 4, f"{site.name}: {len(made)} made epochs audited"
        for rec in made:
            assert [k["key_ID"] for k in rec["qkd_keys"]] == rec["qkd_key_ids"] != []
            for k in rec["qkd_keys"]:
                assert (k["route"], k["link"], k["path"], k["hub"], k["relays"]) == (
                    "mdi_hub", "madrid-mdi", ["KME_INTA", "HUB_MQX4000", "KME_SGSICS"],
                    "HUB_MQX4000", []), f"{site.name}: epoch {rec['epoch']}: {k}"


def test_sigkill_mid_handshake_recovers_without_key_reuse(sitelab: SiteLab) -> None:
    rekey = 3.0
    a, b = two_sites(sitelab, rekey=rekey, lifetime=30.0)
    _wait_epoch(sitelab, a, b, 2, 40)
    # Slow the slave's key arrival so that a handshake is in flight when we kill.
    sitelab.set_fault("KME_SGSICS", key_delay_s=1.5)
    st = sitelab.peer_status(a, b.gateway_id)
    assert st is not None and st["next_rekey_in_s"] is not None
    time.sleep(st["next_rekey_in_s"] + 0.5)  # the next handshake is now waiting on dec_keys
    sitelab.signal_daemon(b, signal.SIGKILL)
    assert b.process is not None
    b.process.wait(10)
    sitelab.clear_faults()
    before = _epoch(sitelab, a, b.gateway_id)
    used_before = {k for k, _ in _journal_key_ids(a)}  # every key_ID the master used
    sitelab.start_daemon(b)
    # Recovery is counted from the moment the restarted daemon answers.
    assert sitelab.wait_for(lambda: sitelab.status(b) is not None, 20, interval_s=0.05)
    _wait_epoch(sitelab, a, b, before + 1, 2 * rekey)
    t = sitelab.tunnels[0]
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=10)
    # The recovered epoch, as both daemons report it, uses a key_ID never used before
    # the kill (the one in flight at the kill included).
    sa, sb = sitelab.peer_status(a, b.gateway_id), sitelab.peer_status(b, a.gateway_id)
    assert sa is not None and sb is not None and sa["qkd_key_ids"] == sb["qkd_key_ids"]
    assert sa["qkd_key_ids"] and not set(sa["qkd_key_ids"]) & used_before


@pytest.mark.parametrize("policy", ["preferred", "required"])
def test_kme_outage_applies_the_policy(sitelab: SiteLab, policy: str) -> None:
    a, b = two_sites(sitelab, policy=policy, rekey=1.5, lifetime=5.0)
    t = sitelab.tunnels[0]
    _wait_epoch(sitelab, a, b, 1, 40)
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15)
    sitelab.set_fault("KME_INTA", outage=True)
    if policy == "preferred":
        def degraded() -> bool:
            st = sitelab.peer_status(a, b.gateway_id)
            return st is not None and st["state"] == "degraded" and "QKD" not in st["sources"]
        assert sitelab.wait_for(degraded, 20), sitelab.peer_status(a, b.gateway_id)
        e = _epoch(sitelab, a, b.gateway_id)
        _wait_epoch(sitelab, a, b, e + 1, 15)  # epochs go on without QKD
        assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=10)
    else:
        def blocked() -> bool:
            st = sitelab.peer_status(a, b.gateway_id)
            return st is not None and st["state"] == "blocked"
        assert sitelab.wait_for(blocked, 20), sitelab.peer_status(a, b.gateway_id)
        assert not sitelab.lab.ping(a.name, t.ip_b, count=2), "traffic flows while blocked"
    sitelab.clear_faults()

    def healthy() -> bool:
        st = sitelab.peer_status(a, b.gateway_id)
        return st is not None and st["state"] == "ok" and "QKD" in st["sources"]
    assert sitelab.wait_for(healthy, 30), sitelab.peer_status(a, b.gateway_id)
    assert sitelab.lab.wait_ping(a.name, t.ip_b, timeout_s=15), "tunnel did not come back"


def test_dead_or_garbage_peer_does_not_disturb_others(sitelab: SiteLab) -> None:
    hub = sitelab.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    good = sitelab.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    bad = sitelab.add_site("upm", "gw-upm", "SAE_UPM_GW", "KME_UPM")
    sitelab.add_wireguard_tunnel(hub, good, "required", 2.0, 20.0)
    sitelab.add_wireguard_tunnel(hub, bad, "required", 2.0, 20.0)
    sitelab.start_simulator()
    for s in (hub, good, bad):
        sitelab.write_config(s)
    sitelab.start_daemon(hub)
    sitelab.start_daemon(good)
    # The "bad" site runs no daemon: first nothing listens (down), then a
    # garbage server answers every connection with random bytes.
    _wait_epoch(sitelab, hub, good, 3, 40)
    st = sitelab.peer_status(hub, bad.gateway_id)
    assert st is not None and st["consecutive_failures"] >= 1
    assert "peer_unreachable" in (st["last_error"] or "")
    garbage = sitelab.lab.popen(bad.name, [
        "python3", "-c",
        "import os,socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{bad.underlay_ip}', 7814)); s.listen()\n"
        "for _ in range(200):\n"
        "    c,_=s.accept(); c.sendall(b'\\x00\\x00\\x00\\x10'+os.urandom(16)); c.close()\n"])
    try:
        failures_before = st["consecutive_failures"]
        e_good = _epoch(sitelab, hub, good.gateway_id)

        def garbage_seen() -> bool:
            s2 = sitelab.peer_status(hub, bad.gateway_id)
            return s2 is not None and s2["consecutive_failures"] > failures_before \
                and "peer_unreachable" not in (s2["last_error"] or "")
        assert sitelab.wait_for(garbage_seen, 30), sitelab.peer_status(hub, bad.gateway_id)
        _wait_epoch(sitelab, hub, good, e_good + 2, 20)  # the good peer goes on rekeying
        s3 = sitelab.peer_status(hub, bad.gateway_id)
        assert s3 is not None and s3["epoch"] == 0  # nothing was ever installed for it
        # Backoff: the retry is further away than the rekey interval after repeated failures.
        assert s3["consecutive_failures"] >= 2
    finally:
        garbage.kill()
        garbage.wait(5)


def test_sighup_adds_and_removes_a_peer_without_touching_others(sitelab: SiteLab) -> None:
    hub = sitelab.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b1 = sitelab.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    b2 = sitelab.add_site("upm", "gw-upm", "SAE_UPM_GW", "KME_UPM")
    sitelab.add_wireguard_tunnel(hub, b1, "required", 30.0, 90.0)  # slow: no rekey in the test
    sitelab.add_wireguard_tunnel(hub, b2, "required", 30.0, 90.0)
    sitelab.start_simulator()
    hub_peers: list[dict[str, Any]] = list(hub.peers)
    hub.peers = hub_peers[:1]  # the hub starts with b1 only
    for s in (hub, b1, b2):
        sitelab.write_config(s)
        sitelab.start_daemon(s)
    _wait_epoch(sitelab, hub, b1, 1, 40)
    e1 = _epoch(sitelab, hub, b1.gateway_id)

    hub.peers = hub_peers  # add b2
    sitelab.write_config(hub)
    sitelab.signal_daemon(hub, signal.SIGHUP)
    _wait_epoch(sitelab, hub, b2, 1, 30)
    assert _epoch(sitelab, hub, b1.gateway_id) == e1, "reload made a new epoch for b1"

    hub.peers = hub_peers[1:]  # remove b1
    sitelab.write_config(hub)
    sitelab.signal_daemon(hub, signal.SIGHUP)
    assert sitelab.wait_for(lambda: sitelab.peer_status(hub, b1.gateway_id) is None
                            and sitelab.status(hub) is not None, 15)
    e2 = _epoch(sitelab, hub, b2.gateway_id)
    time.sleep(1.0)
    assert _epoch(sitelab, hub, b2.gateway_id) == e2, "reload made a new epoch for b2"
    doc = sitelab.status(hub)
    assert doc is not None and doc["reloads"] == 2


def test_status_cli_shows_the_peers(sitelab: SiteLab) -> None:
    a, b = two_sites(sitelab, rekey=2.0, lifetime=10.0)
    _wait_epoch(sitelab, a, b, 1, 40)
    from qsgw_lab.sitelab import qsgw_argv

    table = subprocess.run(qsgw_argv("status", "-s", str(a.status_socket)), capture_output=True,
                           text=True, timeout=20, check=True).stdout
    assert "gw-sgsics" in table and "initiator" in table and "QKD" in table
    raw = subprocess.run(qsgw_argv("status", "--json", "-s", str(a.status_socket)),
                         capture_output=True, timeout=20, check=True).stdout
    doc = json.loads(raw)  # the daemon's document, passed through whole
    assert [p["peer"] for p in doc["peers"]] == ["gw-sgsics"] and doc["peers"][0]["epoch"] >= 1
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    missing = subprocess.run(qsgw_argv("status", "-s", str(Path(a.dir) / "nope.sock")),
                             capture_output=True, text=True, timeout=20)
    assert missing.returncode == 1 and "is the daemon running" in missing.stderr
