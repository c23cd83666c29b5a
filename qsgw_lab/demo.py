"""`make demo`: the MadQCI deployment as gateway sites in network namespaces.

A hub (INTA) and two branches (SGSICS, UPM) keep WireGuard tunnels (real
wireguard-go), and a second UPM gateway an IKEv2 tunnel (real charon with
userspace ESP), all keyed by QKD + ML-KEM-768 + X25519 epochs, each site by
its own `qsgw run` daemon; the KME simulator serves the MadQCI MDI-QKD topology over
mutual TLS. Halfway through, the hub's KME goes dark: the `required` tunnel
(to SGSICS) is blocked once its key expires, the `preferred` one (to UPM) goes
on without QKD, flagged degraded; the `required` IPsec tunnel is torn down
like the WireGuard one; then the KME comes back and so does the
blocked tunnel. DEMO_SECONDS sets the length (default 60); DEMO_BREAK=ipsec
drops the IPsec tunnel's IKE on purpose. The demo exits non-zero when a tunnel
never carried a ping or a QKD key was used twice, keeping its logs. Ctrl-C or
the end removes every namespace and process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qsgw_lab.netns import NetnsLab, netns_unavailable_reason
from qsgw_lab.sitelab import SiteLab, Tunnel, qsgw_argv, start_demo
from qsgw_lab.verdict import PingTally, clip, once_only_check, report_failures, why

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "configs" / "topologies" / "madqci.yaml"
DEMO_PREFIX = "demo"
RTT = re.compile(r"time=([\d.]+) ms")


def _ping(lab: NetnsLab, ns: str, address: str, source: str | None = None) -> str:
    argv = ["ping", "-n", "-c", "1", "-W", "1", *(["-I", source] if source else []), address]
    res = lab.run(ns, argv, timeout=5)
    match = RTT.search(res.stdout)
    return f"{float(match.group(1)):.2f} ms" if res.returncode == 0 and match else "lost"


def _key_supply_check(sites: SiteLab, pairs: list[tuple[str, str]]) -> None:
    """ETSI 014 end to end before the gateways start: each master SAE fetches a key
    (enc_keys), its slave fetches it by key_ID (dec_keys), both with `qsgw kms` from
    their own namespaces over mutual TLS. Only a fingerprint is shown; these keys
    are then discarded, never used for a tunnel."""
    endpoints = str(sites.workdir / "kme-sim" / "endpoints.json")
    by_sae = {s.sae_id: s for s in sites.sites.values()}
    for master, slave in pairs:
        argv = ["kms", "fetch", "--endpoints", endpoints, "--json", "--show-keys"]
        got = sites.lab.run(by_sae[master].name, qsgw_argv(*argv, "--sae", master,
                                                          "--slave", slave), timeout=30)
        if got.returncode != 0:
            print(f"  {master} -> {slave}: enc_keys failed: {got.stderr.strip()[:100]}")
            continue
        key = json.loads(got.stdout)["keys"][0]
        back = sites.lab.run(by_sae[slave].name, qsgw_argv(*argv, "--sae", slave, "--master",
                                                          master, "--key-id", key["key_ID"]),
                             timeout=30)
        if back.returncode != 0:
            print(f"  {master} -> {slave}: dec_keys failed: {back.stderr.strip()[:100]}")
            continue
        match = json.loads(back.stdout)["keys"][0]["key"] == key["key"]
        fingerprint = hashlib.sha256(key["key"].encode()).hexdigest()[:12]
        print(f"  {master} -> {slave}: key {key['key_ID']} "
              f"{'matches on both ends' if match else 'DIFFERS'} (sha256 {fingerprint}...)")


def _print_alarms(proc: subprocess.Popen[str]) -> None:
    """Alarm events from the gateways' MQTT telemetry, as a NOC would see them."""
    assert proc.stdout is not None
    for line in proc.stdout:
        _topic, _, payload = line.partition(" ")
        try:
            event = json.loads(payload)
        except ValueError:
            continue
        if event.get("event") not in ("alarm_raised", "alarm_cleared"):
            continue
        verb = "RAISED " if event["event"] == "alarm_raised" else "cleared"
        print(f"  ALARM {verb} {event['gateway']}: {event['alarm']} ({event['subject']}) "
              f"{event.get('detail', '')[:70]}", flush=True)


def _drop_ike(lab: NetnsLab, ns: str) -> None:
    for rule in (["add", "table", "inet", "qsgwdemo"],
                 ["add", "chain", "inet", "qsgwdemo", "input",
                  "{ type filter hook input priority 0 ; }"],
                 ["add", "rule", "inet", "qsgwdemo", "input", "udp", "dport", "{ 500, 4500 }",
                  "drop"]):
        lab.run(ns, ["nft", *rule], check=True)


def _label(t: Tunnel) -> str:
    return f"{t.a.gateway_id} -> {t.b.gateway_id} ({'wg' if t.kind == 'wireguard' else 'ike'})"


def _row(sites: SiteLab, t: Tunnel, elapsed: float, pings: PingTally) -> str:
    st: dict[str, Any] | None = sites.peer_status(t.a, t.b.gateway_id)
    ping = _ping(sites.lab, t.a.name, t.ip_b, t.ip_a if t.kind == "ipsec" else None)
    pings.record(_label(t), ping != "lost")
    if st is None:
        return f"{elapsed:5.0f}s  {t.a.gateway_id} -> {t.b.gateway_id}: daemon not answering"
    age = "-" if st["key_age_s"] is None else f"{st['key_age_s']:.0f}s"
    sources = "+".join(st["sources"]) or "-"
    err = st.get("last_error") or ""
    if st.get("installed_at") and (st.get("last_error_at") or 0) < st["installed_at"]:
        err = ""  # an error older than the key in use is history
    return (f"{elapsed:5.0f}s  {_label(t):30} {st['policy']:9} "
            f"{st['state']:9} {st['epoch']:5}  {age:>5}  {sources:22} {ping:>9}  "
            f"{clip(err, 48)}")


def main() -> int:
    reason = netns_unavailable_reason()
    if reason:
        print(f"make demo needs network namespaces: {reason}", file=sys.stderr)
        return 1
    seconds = float(os.environ.get("DEMO_SECONDS", "60"))
    rekey = max(3.0, min(10.0, seconds / 10))
    lifetime = rekey * 2.5
    outage_at, heal_at = seconds * 0.4, seconds * 0.75
    lock = start_demo(DEMO_PREFIX)  # one demo at a time; clears a killed demo's leftovers
    if lock is None:
        return 1
    failures: list[str] = []
    pings = PingTally()
    tmp = tempfile.mkdtemp(prefix="qsgw-demo-")
    with lock, NetnsLab(prefix=DEMO_PREFIX) as lab:
        sites = SiteLab(lab, Path(tmp), TOPOLOGY)
        try:
            print("qsgw demo: MadQCI, hub INTA with branches SGSICS and UPM (WireGuard) "
                  "and UPM's second gateway (IKEv2/IPsec) "
                  f"({seconds:.0f} s, rekey every {rekey:.0f} s, key lifetime {lifetime:.0f} s)")
            hub = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
            b1 = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
            b2 = sites.add_site("upm", "gw-upm", "SAE_UPM_GW", "KME_UPM")
            # UPM's second gateway (the KME's second SAE) keys an IKEv2 tunnel
            # through its own charon: the epoch key as RFC 8784 PPK.
            b3 = sites.add_site("upmipsec", "gw-upm-ipsec", "SAE_UPM_BACKUP", "KME_UPM")
            tunnels = [
                sites.add_wireguard_tunnel(hub, b1, "required", rekey, lifetime),
                sites.add_wireguard_tunnel(hub, b2, "preferred", rekey, lifetime),
                sites.add_ipsec_tunnel(hub, b3, "required", rekey, lifetime),
            ]
            for site in (hub, b1, b2, b3):  # a short demo shows a dead tunnel as down
                for peer in site.peers:
                    peer["tunnel"]["liveness_s"] = max(6.0, 2 * rekey)
            sites.start_simulator()
            print(f"KME simulator up: {', '.join(sorted(sites.endpoints['kmes']))} "
                  f"(logs and configs in {tmp})")
            print("key supply check (enc_keys at the master's KME, dec_keys at the slave's):")
            _key_supply_check(sites, [("SAE_INTA_GW", "SAE_SGSICS_GW"),
                                      ("SAE_INTA_GW", "SAE_UPM_GW"),
                                      ("SAE_INTA_GW", "SAE_UPM_BACKUP")])
            broker = sites.start_broker()
            print(f"mosquitto up at {broker['host']}:{broker['port']}: the gateways publish "
                  "state, events and alarms there; alarms are printed as they arrive")
            alarms = sites.subscribe("qsgw/+/events")
            threading.Thread(target=_print_alarms, args=(alarms,), daemon=True).start()
            if os.environ.get("DEMO_BREAK") == "ipsec":
                # On purpose, to show what a broken tunnel looks like (and that the
                # demo then fails): IKE into UPM's second gateway is dropped.
                _drop_ike(lab, b3.name)
                print("--- DEMO_BREAK=ipsec: UDP 500/4500 into gw-upm-ipsec dropped (nftables)")
            for site in (hub, b1, b2, b3):
                sites.write_config(site)
                sites.start_daemon(site)
            header = (f"{'time':>6}  {'tunnel':30} {'policy':9} {'state':9} {'epoch':>5}  "
                      f"{'age':>5}  {'key sources':22} {'ping':>9}  last error")
            started = time.monotonic()
            outage = healed = False
            line = 0
            while (elapsed := time.monotonic() - started) < seconds:
                if not outage and elapsed >= outage_at:
                    sites.set_fault("KME_INTA", outage=True)
                    outage = True
                    print(f"--- {elapsed:.0f}s: KME_INTA outage injected (every call answers 503)")
                if outage and not healed and elapsed >= heal_at:
                    sites.clear_faults()
                    healed = True
                    print(f"--- {elapsed:.0f}s: KME_INTA restored")
                if line % 12 == 0:
                    print(header)
                for t in tunnels:
                    print(_row(sites, t, elapsed, pings), flush=True)
                line += 1
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
            failures = _summary(sites, tunnels, pings)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up")
            failures = ["interrupted"]
        except Exception as exc:
            failures = [f"the demo itself failed: {type(exc).__name__}: {exc}"]
            raise
        finally:
            sites.close()
            report_failures(failures, Path(tmp), "demo")
            shutil.rmtree(tmp, ignore_errors=True)
    print("demo finished: namespaces, daemons, wireguard-go and the simulator are gone")
    return 1 if failures else 0


def _summary(sites: SiteLab, tunnels: list[Tunnel], pings: PingTally) -> list[str]:
    """Print the end summary; return what failed (a tunnel that never carried a
    ping, a QKD key used twice), one line each."""
    print("\nsummary (from `qsgw status --json` of each site):")
    for site in sites.sites.values():
        doc = sites.status(site)
        if doc is None:
            print(f"  {site.gateway_id}: no status")
            continue
        for p in doc["peers"]:
            print(f"  {site.gateway_id} -> {p['peer']}: {p['epochs_made']} epochs, "
                  f"now {p['state']}, epoch {p['epoch']}, "
                  f"sources {'+'.join(p['sources']) or '-'}")
    for t in tunnels:
        print(f"  {_label(t)}: {pings.line(_label(t))}")
    delivered = len(sites.delivered("SAE_INTA_GW"))
    print(f"  QKD keys delivered by the simulator to the hub: {delivered}")
    line, problems = once_only_check(sites)
    print(line.replace("  QKD", "  once-only key check: QKD", 1))
    failures = [f"{_label(t)} never carried a ping: {why(sites.peer_status(t.a, t.b.gateway_id))}"
                for t in tunnels if _label(t) in pings.silent()]
    return failures + [f"key reuse: {p}" for p in problems]


if __name__ == "__main__":
    sys.exit(main())
