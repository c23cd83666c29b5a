"""MQTT telemetry against a real mosquitto (TLS + password): retained state,
events, alarms, the last will, and a broker outage with drops and drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.telemetry import MqttPublisher, MqttSettings, MqttSettingsError, Telemetry

from .conftest import Broker

GW = "gw-lux"


def settings_for(b: Broker, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": b.port,
        "ca_file": b.ca_file,
        "username": b.username,
        "password_file": b.password_file,
        "keepalive": 5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "publish_timeout_s": 3.0,
    }
    base.update(kw)
    return MqttSettings(**base)


@dataclass
class Collector:
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(
        self, pred: Callable[[str, bytes, bool], bool], timeout: float = 15.0
    ) -> tuple[str, bytes, bool]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if pred(*m):
                    return m
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not received; got topics {[m[0] for m in self.messages]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for t, p, _ in self.messages:
            if t == f"qsgw/{GW}/events":
                doc = json.loads(p)
                if doc["event"] == name:
                    out.append(doc)
        return out


@contextlib.asynccontextmanager
async def subscriber(b: Broker) -> AsyncIterator[Collector]:
    col = Collector()
    client = aiomqtt.Client(
        "127.0.0.1",
        b.port,
        username=b.username,
        password=b.password_file.read_text().strip(),
        tls_params=aiomqtt.TLSParameters(ca_certs=str(b.ca_file)),
    )
    async with client:
        await client.subscribe(f"qsgw/{GW}/#", qos=1)

        async def pump() -> None:
            async for msg in client.messages:
                payload = (
                    msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                )
                col.messages.append((str(msg.topic), payload, bool(msg.retain)))
                col.changed.set()

        task = asyncio.create_task(pump())
        try:
            yield col
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def is_json(topic: str, **want: Any) -> Callable[[str, bytes, bool], bool]:
    def pred(t: str, p: bytes, _r: bool) -> bool:
        if t != topic:
            return False
        try:
            doc = json.loads(p)
        except ValueError:
            return False
        return all(doc.get(k) == v for k, v in want.items())

    return pred


async def test_state_events_alarms_and_graceful_offline(broker: Broker) -> None:
    pub = MqttPublisher(settings_for(broker), GW)
    tel = Telemetry(GW, mqtt=pub)
    await tel.start()
    try:
        tel.peer_state(
            "kirchberg",
            epoch=3,
            key_age_s=12.5,
            sources=["qkd", "mlkem768", "x25519"],
            policy_state="ok",
            last_error=None,
        )
        tel.epoch_made(
            "kirchberg", 4, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"], ["id-4"], 0.2, False
        )
        tel.policy_changed("kirchberg", "ok", "degraded")
        tel.epoch_failed("kirchberg", 5, "kme_unavailable", "KME_A did not answer")
        # A subscriber arriving after all was sent sees the retained state.
        for _ in range(200):
            if pub.connected and pub.pending() == 0:
                break
            await asyncio.sleep(0.05)
        assert pub.connected and pub.pending() == 0
        async with subscriber(broker) as col:
            await col.wait_for(lambda t, p, r: t == f"qsgw/{GW}/status" and p == b"online" and r)
            _, p, retained = await col.wait_for(is_json(f"qsgw/{GW}/peers/kirchberg/state"))
            state = json.loads(p)
            assert retained
            assert state["epoch"] == 3 and state["policy_state"] == "ok"
            assert state["sources"] == ["mlkem768", "qkd", "x25519"]
            _, p, retained = await col.wait_for(
                is_json(f"qsgw/{GW}/alarms/qkd_degraded/kirchberg", active=True)
            )
            assert retained and json.loads(p)["severity"] == "major"
            await col.wait_for(is_json(f"qsgw/{GW}/state", gateway=GW))

            # Events published while subscribed arrive on the events topic.
            tel.epoch_made("kirchberg", 6, "mlkem768+x25519", ["mlkem768", "x25519"], [], 0.1, True)
            tel.policy_changed("kirchberg", "degraded", "ok")
            await col.wait_for(is_json(f"qsgw/{GW}/events", event="epoch_made", epoch=6))
            await col.wait_for(is_json(f"qsgw/{GW}/events", event="policy_changed", new="ok"))
            await col.wait_for(
                is_json(f"qsgw/{GW}/events", event="alarm_cleared", alarm="qkd_degraded")
            )
            await col.wait_for(is_json(f"qsgw/{GW}/alarms/qkd_degraded/kirchberg", active=False))
            await tel.stop()
            await col.wait_for(lambda t, p, r: t == f"qsgw/{GW}/status" and p == b"offline")
    finally:
        await tel.stop()


_CHILD = """
import asyncio, sys
from pathlib import Path
from gateway.telemetry import MqttPublisher, MqttSettings
async def main():
    s = MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), ca_file=Path(sys.argv[2]),
                     username=sys.argv[3], password_file=Path(sys.argv[4]), keepalive=5)
    p = MqttPublisher(s, sys.argv[5])
    await p.start()
    while not p.connected:
        await asyncio.sleep(0.05)
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_last_will_marks_gateway_offline(broker: Broker) -> None:
    async with subscriber(broker) as col:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(broker.port),
                str(broker.ca_file),
                broker.username,
                str(broker.password_file),
                GW,
            ],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            await col.wait_for(lambda t, p, r: t == f"qsgw/{GW}/status" and p == b"online")
            os.kill(child.pid, signal.SIGKILL)  # no clean disconnect: the broker sends the will
            await col.wait_for(lambda t, p, r: t == f"qsgw/{GW}/status" and p == b"offline")
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)


async def test_broker_outage_never_blocks_counts_drops_and_drains(broker: Broker) -> None:
    queue_size = 20
    # Reconnect slowly enough that the test's subscriber is back first.
    pub = MqttPublisher(
        settings_for(broker, queue_size=queue_size, reconnect_min_s=1.5, reconnect_max_s=1.5), GW
    )
    tel = Telemetry(GW, mqtt=pub)
    await tel.start()
    try:
        async with subscriber(broker) as col:
            await col.wait_for(lambda t, p, r: t == f"qsgw/{GW}/status" and p == b"online")
        broker.stop()
        # Let the publisher notice (its next publish fails) so the outage is real for it.
        tel.epoch_made("redu", 1, "s", ["x25519"], [], 0.0, False)
        for _ in range(100):
            if not pub.connected:
                break
            await asyncio.sleep(0.05)
        assert not pub.connected

        n = 100
        slowest = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            tel.epoch_made(
                "redu", 100 + i, "mlkem768+x25519", ["mlkem768", "x25519"], [], 0.0, False
            )
            tel.peer_state(
                "redu",
                epoch=100 + i,
                key_age_s=0.0,
                sources=["mlkem768", "x25519"],
                policy_state="ok",
                last_error=None,
            )
            slowest = max(slowest, time.perf_counter() - t0)
            await asyncio.sleep(0)
        # Every call returned while the broker was down; the queue kept its bound.
        assert broker.proc is None
        print(json.dumps({"calls_while_down": 2 * n, "slowest_call_s": slowest}))
        assert pub.queued() == queue_size
        assert pub.dropped_total >= n - queue_size

        dropped = pub.dropped_total
        broker.start()
        async with subscriber(broker) as col:
            report = await col.wait_for(is_json(f"qsgw/{GW}/events", event="telemetry_dropped"))
            assert json.loads(report[1])["count"] == dropped
            last = await col.wait_for(
                is_json(f"qsgw/{GW}/events", event="epoch_made", epoch=100 + n - 1)
            )
            assert last
            # The queue drained oldest-first: the newest `queue_size` events survived.
            epochs = [e["epoch"] for e in col.events("epoch_made")]
            assert epochs == list(range(100 + n - queue_size, 100 + n))
            # Retained state lost with the broker (no persistence) is re-sent.
            await col.wait_for(is_json(f"qsgw/{GW}/peers/redu/state", epoch=100 + n - 1))
            # Events after the restart arrive too.
            tel.epoch_failed("redu", 500, "handshake_timeout", "no RESP")
            await col.wait_for(is_json(f"qsgw/{GW}/events", event="epoch_failed", epoch=500))
        assert pub.queued() == 0
    finally:
        await tel.stop()


async def test_wrong_password_keeps_trying_without_raising(broker: Broker, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("not-the-password\n")
    pub = MqttPublisher(settings_for(broker, password_file=wrong), GW)
    await pub.start()
    try:
        pub.publish_event({"event": "x"})
        await asyncio.sleep(0.5)
        assert not pub.connected and pub.queued() == 1
    finally:
        await pub.stop()


def test_settings_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(MqttSettingsError, match="queue_size"):
        MqttSettings(host="h", queue_size=0)
    with pytest.raises(MqttSettingsError, match="key_file"):
        MqttSettings(host="h", cert_file=tmp_path / "c.pem")
    with pytest.raises(MqttSettingsError, match="topic_prefix"):
        MqttSettings(host="h", topic_prefix="a/#")


def test_topic_segments_escape_wildcards() -> None:
    pub = MqttPublisher(MqttSettings(host="h"), "gw/1")
    assert pub.topic("peers", "a+b#c/d", "state") == "qsgw/gw%2F1/peers/a%2Bb%23c%2Fd/state"
