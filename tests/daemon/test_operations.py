"""Operations through the running daemon: /metrics, MQTT, audit trail, and no key anywhere."""

from __future__ import annotations

import base64
import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.telemetry import verify_files
from qsgw_lab.sitelab import Site, SiteLab

pytestmark = pytest.mark.netns

METRICS_PORT = 9814
SCRAPE = ("import sys,urllib.request\n"
          "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


def _scrape(sites: SiteLab, site: Site) -> str:
    url = f"http://{site.underlay_ip}:{METRICS_PORT}/metrics"
    return sites.lab.run(site.name, [sys.executable, "-c", SCRAPE, url], timeout=15,
                         check=True).stdout


def _value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _start(sites: SiteLab, policy: str, rekey: float, lifetime: float,
           audit_rotate: int | None = None, mqtt_keepalive: int = 30) -> tuple[Site, Site]:
    a = sites.add_site("inta", "gw-inta", "SAE_INTA_GW", "KME_INTA")
    b = sites.add_site("sgsics", "gw-sgsics", "SAE_SGSICS_GW", "KME_SGSICS")
    sites.add_wireguard_tunnel(a, b, policy, rekey, lifetime)
    sites.start_simulator(record_keys=True)
    sites.start_broker()
    for s in (a, b):
        telemetry: dict[str, object] = {
            "metrics": {"listen": f"{s.underlay_ip}:{METRICS_PORT}"}}
        if audit_rotate:
            telemetry["audit"] = {"rotate_bytes": audit_rotate, "sign": True}
        telemetry["mqtt"] = {"keepalive_s": mqtt_keepalive}  # merged into the lab's broker
        sites.write_config(s, {"telemetry": telemetry})
        sites.start_daemon(s)
    return a, b


def _state(sites: SiteLab, a: Site, b: Site) -> str | None:
    st = sites.peer_status(a, b.gateway_id)
    return None if st is None else str(st["state"])


def test_metrics_follow_an_epoch_an_outage_and_the_recovery(sitelab: SiteLab) -> None:
    a, b = _start(sitelab, "preferred", rekey=1.5, lifetime=6.0)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok", 40)
    m0 = _scrape(sitelab, a)
    assert _value(m0, "qsgw_epochs_total", peer="gw-sgsics", outcome="made") >= 1
    assert _value(m0, "qsgw_qkd_keys_fetched_total", peer="gw-sgsics") >= 1
    assert _value(m0, "qsgw_kme_up", kme="KME_INTA") == 1
    assert _value(m0, "qsgw_peer_policy_state", peer="gw-sgsics", state="ok") == 1

    sitelab.set_fault("KME_INTA", outage=True)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "degraded", 20)
    m1 = _scrape(sitelab, a)
    assert _value(m1, "qsgw_kme_call_errors_total", kme="KME_INTA") > \
        _value(m0, "qsgw_kme_call_errors_total", kme="KME_INTA")
    assert _value(m1, "qsgw_kme_up", kme="KME_INTA") == 0
    assert _value(m1, "qsgw_alarm_active", alarm="qkd_degraded", subject="gw-sgsics") == 1
    assert _value(m1, "qsgw_alarm_active", alarm="kme_unreachable", subject="KME_INTA") == 1
    assert _value(m1, "qsgw_peer_policy_state", peer="gw-sgsics", state="degraded") == 1

    sitelab.clear_faults()
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok", 30)
    m2 = _scrape(sitelab, a)
    assert _value(m2, "qsgw_alarm_active", alarm="qkd_degraded", subject="gw-sgsics") == 0
    assert _value(m2, "qsgw_kme_up", kme="KME_INTA") == 1
    assert _value(m2, "qsgw_epochs_total", peer="gw-sgsics", outcome="made") > \
        _value(m1, "qsgw_epochs_total", peer="gw-sgsics", outcome="made")


def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


def test_no_key_material_in_logs_telemetry_metrics_or_audit(sitelab: SiteLab) -> None:
    a, b = _start(sitelab, "required", rekey=1.0, lifetime=6.0, audit_rotate=4096)
    events = sitelab.subscribe("qsgw/#")
    t = sitelab.tunnels[0]
    psks: set[str] = set()
    deadline = time.monotonic() + 40
    def rotated() -> bool:
        return len(list((a.dir / "state").glob("audit*.jsonl"))) >= 2

    while time.monotonic() < deadline and (len(psks) < 8 or not rotated()):
        for site, ifname in ((a, t.if_a), (b, t.if_b)):
            psk = sitelab.preshared_key(site, ifname)
            if psk and psk != "(none)":
                psks.add(psk)
        time.sleep(0.3)
    assert len(psks) >= 6, "too few epochs observed"
    metrics = _scrape(sitelab, a) + _scrape(sitelab, b)
    qkd_keys = sitelab.recorded_keys()
    assert qkd_keys, "the simulator handed out no keys"
    for s in (a, b):
        sitelab.stop_daemon(s)
    events.terminate()
    mqtt_text, _ = events.communicate(timeout=10)
    assert "epoch_made" in mqtt_text

    secrets_used: list[bytes] = [base64.b64decode(p) for p in psks]
    secrets_used += [base64.b64decode(k) for k in qkd_keys.values()]
    for s in (a, b):
        for f in list((s.dir / "identity").glob("*.key")) + list(s.dir.glob("wg-*.key")):
            raw = f.read_bytes()
            secrets_used.append(raw.strip() if f.name.startswith("wg-") else raw)
    # The WireGuard private keys are base64 text in their files; decode them too.
    secrets_used += [base64.b64decode(x) for x in
                     (f.read_text().strip() for s in (a, b) for f in s.dir.glob("wg-*.key"))]

    outputs: dict[str, str] = {"mqtt": mqtt_text, "metrics": metrics}
    for s in (a, b):
        outputs[f"{s.name}/daemon.log"] = s.log_path.read_text(errors="replace")
        for f in sorted((s.dir / "state").glob("audit*")):
            outputs[f"{s.name}/{f.name}"] = f.read_text(errors="replace")
    audit_files = sorted((a.dir / "state").glob("audit*.jsonl"))
    assert len(audit_files) >= 2, "the audit trail did not rotate"
    result = verify_files(audit_files)
    assert result.ok, result.breaks

    for name, text in outputs.items():
        for secret in secrets_used:
            for form in _forms(secret if isinstance(secret, bytes) else secret.encode()):
                if len(form) >= 16:
                    assert form not in text, f"key material found in {name}"
    # And the audit trail names the QKD key_IDs it used, not the keys.
    audit_text = "".join(outputs[k] for k in outputs if "/audit" in k)
    used_ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                              audit_text))
    assert used_ids & set(qkd_keys), "the audit trail does not name the QKD key_IDs"


def test_audit_cli_verifies_the_run(sitelab: SiteLab) -> None:
    a, b = _start(sitelab, "required", rekey=1.0, lifetime=6.0, audit_rotate=4096)
    assert sitelab.wait_for(lambda: (sitelab.peer_status(a, b.gateway_id) or {}).get("epoch", 0)
                            >= 4, 40)
    for s in (a, b):
        sitelab.stop_daemon(s)
    files = sorted(str(f) for f in (a.dir / "state").glob("audit*.jsonl"))
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", *files,
                         "--identity", str(a.dir / "identity")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "show", *files,
                            "--peer", "gw-sgsics", "--json"], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    records = [json.loads(line) for line in shown.splitlines() if line.strip()]
    assert any(r.get("type") == "epoch" or r.get("kind") == "epoch" for r in records)
    # Tamper with one record of a rotated file: verify locates it.
    first = Path(files[0])
    lines = first.read_text().splitlines()
    lines[1] = lines[1].replace('"gw-sgsics"', '"gw-evil"', 1)
    first.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", *files],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert first.name in bad.stdout + bad.stderr


def _lines(proc: subprocess.Popen[str], seconds: float) -> list[str]:
    """Stop a mosquitto_sub after `seconds` and return what it printed."""
    time.sleep(seconds)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out.splitlines()


def test_epochs_go_on_while_the_broker_is_down_and_the_queue_drains(sitelab: SiteLab) -> None:
    a, b = _start(sitelab, "required", rekey=1.0, lifetime=8.0)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok", 40)
    topic = f"qsgw/{a.gateway_id}/events"
    # A persistent session (QoS 1), registered now: whatever the gateway publishes
    # after the restart is kept for it even if it reconnects later than the gateway.
    sub = sitelab.subscribe(topic, session="noc")
    assert sitelab.wait_for(lambda: _broker_has_session(sitelab), 10)
    sub.terminate()  # offline now; the broker keeps the session (and saves it on stop)
    sub.wait(10)
    sitelab.stop_broker()
    down_from = (sitelab.peer_status(a, b.gateway_id) or {})["epoch"]
    time.sleep(6)
    down_to = (sitelab.peer_status(a, b.gateway_id) or {})["epoch"]
    assert down_to >= down_from + 3, "epochs stalled while the broker was down"
    sitelab.restart_broker()
    want = set(range(down_from + 1, down_to + 1))
    made: set[int] = set()
    lines: queue.Queue[str] = queue.Queue()

    def pump(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    deadline = time.monotonic() + 40  # the daemon reconnects with backoff (up to 30 s)
    sub = None
    try:
        while time.monotonic() < deadline and not want <= made:
            if sub is None or sub.poll() is not None:  # broker not listening yet: again
                sub = sitelab.subscribe(topic, session="noc")
                threading.Thread(target=pump, args=(sub,), daemon=True).start()
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            payload = json.loads(line.partition(" ")[2])
            if payload.get("event") == "epoch_made" and payload.get("peer") == b.gateway_id:
                made.add(payload["epoch"])
    finally:
        if sub is not None:
            sub.terminate()
            sub.wait(10)
    # Epochs made while the broker was away arrive once it is back (queued, in order).
    assert want <= made, (down_from, down_to, sorted(made))


def _broker_has_session(sitelab: SiteLab) -> bool:
    log = sitelab.workdir / "mosquitto" / "mosquitto.log"
    return log.exists() and "as noc" in log.read_text(errors="replace")


def test_last_will_marks_a_killed_gateway_offline(sitelab: SiteLab) -> None:
    import signal

    a, b = _start(sitelab, "required", rekey=2.0, lifetime=10.0, mqtt_keepalive=2)
    assert sitelab.wait_for(lambda: _state(sitelab, a, b) == "ok", 40)
    status_topic = f"qsgw/{a.gateway_id}/status"
    online = sitelab.subscribe(status_topic)
    assert any(line.endswith(" online") for line in _lines(online, 1.5))
    sitelab.signal_daemon(a, signal.SIGKILL)
    assert a.process is not None
    a.process.wait(10)
    # The broker publishes the will once the keepalive runs out (1.5 x 2 s).
    deadline = time.monotonic() + 20
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = _lines(sitelab.subscribe(status_topic), 2)
        if any(line.endswith(" offline") for line in seen):
            break
    assert any(line.endswith(" offline") for line in seen), seen
