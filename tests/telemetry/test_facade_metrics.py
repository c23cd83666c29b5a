"""The facade fed like the daemon feeds it: /metrics over HTTP, alarms, audit records."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import (
    AlarmName,
    AlarmSettings,
    AuditLog,
    Metrics,
    MetricsSettings,
    Telemetry,
    verify_files,
)


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        resp = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert resp.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def tel(tmp_path: Path) -> AsyncIterator[Telemetry]:
    t = Telemetry(
        "gw-test",
        audit=AuditLog(tmp_path / "audit.jsonl"),
        metrics=Metrics(MetricsSettings(host="127.0.0.1", port=0)),
        alarm_settings=AlarmSettings(pool_low_threshold=5, handshake_failure_threshold=3),
    )
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


def audit_records(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


async def test_metrics_move_with_epoch_and_kme_outage(tel: Telemetry, tmp_path: Path) -> None:
    assert tel.metrics is not None and tel.metrics.port is not None
    port = tel.metrics.port
    before = await scrape(port)
    assert val(before, "qsgw_alarms_active") == 0

    tel.epoch_made(
        "paris", 1, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"], ["k-1"], 0.05, False
    )
    tel.qkd_keys_fetched("paris", 1)
    tel.peer_state(
        "paris",
        epoch=1,
        key_age_s=0.0,
        sources=["qkd", "mlkem768", "x25519"],
        policy_state="ok",
        last_error=None,
    )
    tel.kme_call("KME_A", "enc_keys", 0.012, None)
    m = await scrape(port)
    assert (
        val(m, "qsgw_epochs_total", peer="paris", outcome="made", sources="mlkem768+qkd+x25519")
        == 1
    )
    assert val(m, "qsgw_qkd_keys_fetched_total", peer="paris") == 1
    assert val(m, "qsgw_peer_epoch", peer="paris") == 1
    assert val(m, "qsgw_peer_policy_state", peer="paris", state="ok") == 1
    assert val(m, "qsgw_kme_call_duration_seconds_count", kme="KME_A", operation="enc_keys") == 1

    # The KME goes away: errors counted, alarm raised (once, however often reported).
    for _ in range(3):
        tel.kme_call("KME_A", "enc_keys", 5.0, "unavailable")
        tel.kme_reachable("KME_A", False)
    tel.epoch_failed("paris", 2, "kme_unavailable", "KME_A did not answer")
    m = await scrape(port)
    assert (
        val(m, "qsgw_kme_call_errors_total", kme="KME_A", operation="enc_keys", kind="unavailable")
        == 3
    )
    assert val(m, "qsgw_alarm_active", alarm="kme_unreachable", subject="KME_A") == 1
    assert val(m, "qsgw_alarms_active") == 1
    assert val(m, "qsgw_kme_up", kme="KME_A") == 0
    assert val(m, "qsgw_epochs_total", peer="paris", outcome="failed", sources="none") == 1
    assert val(m, "qsgw_epoch_failures_total", peer="paris", reason="kme_unavailable") == 1

    # It comes back: alarm cleared, next epoch counted.
    tel.kme_reachable("KME_A", True)
    tel.epoch_made(
        "paris", 2, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"], ["k-2"], 0.04, False
    )
    m = await scrape(port)
    assert val(m, "qsgw_alarm_active", alarm="kme_unreachable", subject="KME_A") == 0
    assert val(m, "qsgw_alarms_active") == 0
    assert val(m, "qsgw_kme_up", kme="KME_A") == 1
    assert (
        val(m, "qsgw_epochs_total", peer="paris", outcome="made", sources="mlkem768+qkd+x25519")
        == 2
    )

    assert tel.audit is not None
    tel.audit.flush()
    recs = audit_records(tmp_path / "audit.jsonl")
    alarms = [(r["action"], r["alarm"]) for r in recs if r["type"] == "alarm"]
    assert alarms == [("raised", "kme_unreachable"), ("cleared", "kme_unreachable")]
    epochs = [(r["epoch"], r["outcome"]) for r in recs if r["type"] == "epoch"]
    assert epochs == [(1, "made"), (2, "failed"), (2, "made")]
    made = next(r for r in recs if r["type"] == "epoch")
    assert made["qkd_key_ids"] == ["k-1"] and made["sources"] == ["mlkem768", "qkd", "x25519"]
    assert verify_files([tmp_path / "audit.jsonl"]).ok


async def test_key_age_grows_between_scrapes(tel: Telemetry) -> None:
    assert tel.metrics is not None and tel.metrics.port is not None
    tel.peer_state(
        "ghent",
        epoch=4,
        key_age_s=30.0,
        sources=["mlkem768", "x25519"],
        policy_state="degraded",
        last_error="kme_unavailable",
    )
    m = await scrape(tel.metrics.port)
    assert 30.0 <= val(m, "qsgw_peer_key_age_seconds", peer="ghent") < 60.0
    assert val(m, "qsgw_peer_policy_state", peer="ghent", state="degraded") == 1
    assert val(m, "qsgw_peer_policy_state", peer="ghent", state="ok") == 0


async def test_alarm_rules(tel: Telemetry, tmp_path: Path) -> None:
    assert tel.metrics is not None and tel.metrics.port is not None
    # Pool low against the threshold (5), cleared when refilled.
    tel.pool_level("KME_A", "SAE_B", 3, 1000)
    tel.pool_level("KME_A", "SAE_B", 2, 1000)
    assert [a.name.value for a in tel.alarms.active()] == ["key_pool_low"]
    tel.pool_level("KME_A", "SAE_B", 5, 1000)
    assert tel.alarms.active() == []

    # Handshake failures: alarm at the third in a row; a made epoch clears it.
    tel.handshake_failed("ghent", "bad_signature")
    tel.handshake_failed("ghent", "bad_signature")
    assert not tel.alarms.is_active(AlarmName.HANDSHAKE_FAILURES, "ghent")
    tel.handshake_failed("ghent", "stale_timestamp")
    m = await scrape(tel.metrics.port)
    assert val(m, "qsgw_alarm_active", alarm="handshake_failures", subject="ghent") == 1
    assert val(m, "qsgw_handshake_failures_total", peer="ghent", reason="bad_signature") == 2
    tel.epoch_made("ghent", 9, "mlkem768+x25519", ["mlkem768", "x25519"], [], 0.01, True)
    m = await scrape(tel.metrics.port)
    assert val(m, "qsgw_alarm_active", alarm="handshake_failures", subject="ghent") == 0

    # Policy: degraded -> blocked -> ok, each alarm raised and cleared once.
    tel.policy_changed("redu", "ok", "degraded")
    tel.policy_changed("redu", "degraded", "blocked")
    m = await scrape(tel.metrics.port)
    assert val(m, "qsgw_alarm_active", alarm="tunnel_blocked", subject="redu") == 1
    assert val(m, "qsgw_alarm_active", alarm="qkd_degraded", subject="redu") == 0
    tel.policy_changed("redu", "blocked", "ok")
    assert tel.alarms.active() == []

    # Identity refused from an unknown source: raised, expires after the hold time.
    tel.identity_refused(None, "198.51.100.7")
    assert [a.subject for a in tel.alarms.active()] == ["unknown@198.51.100.7"]
    tel.expire_alarms(now=10**10)
    assert tel.alarms.active() == []

    assert tel.audit is not None
    tel.audit.flush()
    recs = audit_records(tmp_path / "audit.jsonl")
    got = [(r["action"], r["alarm"], r["subject"]) for r in recs if r["type"] == "alarm"]
    assert got == [
        ("raised", "key_pool_low", "KME_A:SAE_B"),
        ("cleared", "key_pool_low", "KME_A:SAE_B"),
        ("raised", "handshake_failures", "ghent"),
        ("cleared", "handshake_failures", "ghent"),
        ("raised", "qkd_degraded", "redu"),
        ("raised", "tunnel_blocked", "redu"),
        ("cleared", "qkd_degraded", "redu"),
        ("cleared", "tunnel_blocked", "redu"),
        ("raised", "identity_refused", "unknown@198.51.100.7"),
        ("cleared", "identity_refused", "unknown@198.51.100.7"),
    ]


async def test_sink_fault_never_reaches_the_daemon(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.close()  # every later write fails
    t = Telemetry("gw", audit=audit)
    t.epoch_made("p", 1, "s", ["x25519"], [], 0.0, False)
    audit.flush()
    assert audit.write_failures == 1


def test_unknown_alarm_name_is_refused_without_raising() -> None:
    t = Telemetry("gw")
    t.alarm("no_such_alarm", "x", True)
    assert t.internal_errors == 1 and t.alarms.active() == []


async def test_a_peer_has_one_policy_series_and_no_histogram_of_its_own(tel: Telemetry) -> None:
    """A hub scrapes in proportion to its series: the policy state is one series per
    peer that follows the state, and epoch durations are the gateway's histogram."""
    assert tel.metrics is not None and tel.metrics.port is not None
    for state in ("starting", "ok", "down", "ok"):
        tel.peer_state("lyon", epoch=1, key_age_s=0.0, sources=["qkd"], policy_state=state,
                       last_error=None)
    tel.epoch_made("lyon", 1, "default", ["qkd"], ["k-9"], 0.02, False)
    m = await scrape(tel.metrics.port)
    states = {dict(labels)["state"]: v for (name, labels), v in m.items()
              if name == "qsgw_peer_policy_state" and dict(labels).get("peer") == "lyon"}
    assert states == {"ok": 1.0}
    durations = [labels for name, labels in m if name.startswith("qsgw_epoch_duration_seconds")]
    assert durations and all("peer" not in dict(labels) for labels in durations)
    assert not [name for name, _ in m if name.endswith("_created")]
