"""No key material in any output: MQTT, /metrics, audit files, logs.

The facade is fed as the daemon feeds it, with secrets living in the objects
next to what it is given (key containers, KEM outputs, the epoch key, a
failed install's exception), and every output is searched for them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.telemetry import (
    AuditLog,
    Metrics,
    MetricsSettings,
    MqttPublisher,
    Telemetry,
    configure_logging,
    peer_logger,
)

from .conftest import Broker
from .test_mqtt import GW, settings_for, subscriber


@dataclass(frozen=True)
class QkdKey:  # the shape of kms_client's Key: the secret hidden from repr
    key_id: str
    key: bytes = field(repr=False)


@dataclass
class EpochKey:
    epoch: int
    sources: tuple[str, ...]
    key: bytearray = field(repr=False)


class InstallError(Exception):
    pass


def forms(secret: bytes) -> list[bytes]:
    """Every way a secret could be spelled in an output."""
    out = [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        repr(secret).encode(),
        json.dumps(repr(secret))[1:-1].encode(),  # a repr inside a JSON string
    ]
    # Also a 12-byte window of each, in case something is truncated.
    out += [secret[:12].hex().encode(), base64.b64encode(secret[:12])]
    return out


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_no_key_material_in_any_output(
    broker: Broker, tmp_path: Path, restore_root: None
) -> None:
    qkd = QkdKey("3f1e6b9a-0000-4000-8000-000000000001", os.urandom(32))
    kem_ss, x25519_ss = os.urandom(32), os.urandom(32)
    epoch_key = EpochKey(5, ("qkd", "mlkem768", "x25519"), bytearray(os.urandom(32)))
    secrets_ = [qkd.key, kem_ss, x25519_ss, bytes(epoch_key.key)]

    logbuf = io.StringIO()
    configure_logging("DEBUG", "json", stream=logbuf)
    log = peer_logger(logging.getLogger("qsgw.daemon"), "luxembourg", epoch_key.epoch)

    audit_dir = tmp_path / "audit"
    tel = Telemetry(
        GW,
        audit=AuditLog(audit_dir / "audit.jsonl", max_bytes=2048),
        metrics=Metrics(MetricsSettings(port=0)),
        mqtt=MqttPublisher(settings_for(broker), GW),
    )
    await tel.start()
    try:
        async with subscriber(broker) as col:
            # What the daemon does around an epoch, with the secrets at hand.
            log.debug("fetched %r", qkd)
            log.info("epoch key ready: %s", epoch_key)
            log.debug("kem secret %s x25519 %s", kem_ss, x25519_ss)  # a careless line
            tel.kme_call("KME_LUX", "enc_keys", 0.03, None)
            tel.qkd_keys_fetched("luxembourg", 1)
            tel.epoch_made(
                "luxembourg",
                epoch_key.epoch,
                "mlkem768+x25519",
                list(epoch_key.sources),
                [qkd.key_id],
                0.12,
                False,
            )
            tel.peer_state(
                "luxembourg",
                epoch=epoch_key.epoch,
                key_age_s=0.0,
                sources=list(epoch_key.sources),
                policy_state="ok",
                last_error=None,
            )
            err = InstallError(f"cannot install epoch {epoch_key.epoch} for {epoch_key!r}")
            log.error("install failed: %s", err)
            tel.epoch_failed("luxembourg", 6, "install_failed", str(err))
            tel.handshake_failed("luxembourg", "bad_mac")
            tel.policy_changed("luxembourg", "ok", "degraded")
            for i in range(20):  # enough to rotate the audit file
                tel.epoch_made(
                    "luxembourg", 7 + i, "mlkem768+x25519", ["mlkem768", "x25519"], [], 0.1, True
                )
            await col.wait_for(lambda t, p, r: b'"epoch":26' in p and t.endswith("/events"))
            async with httpx.AsyncClient() as http:
                assert tel.metrics is not None
                metrics_text = (
                    await http.get(f"http://127.0.0.1:{tel.metrics.port}/metrics")
                ).content
            mqtt_bytes = b"\n".join(t.encode() + b" " + p for t, p, _ in col.messages)
    finally:
        await tel.stop()
    audit_bytes = b"".join(p.read_bytes() for p in sorted(audit_dir.iterdir()))

    outputs = {
        "logs": logbuf.getvalue().encode(),
        "mqtt": mqtt_bytes,
        "metrics": metrics_text,
        "audit": audit_bytes,
    }
    # The outputs are not empty: they do carry what the daemon told them.
    assert qkd.key_id.encode() in outputs["audit"] and qkd.key_id.encode() in outputs["mqtt"]
    assert b"luxembourg" in outputs["metrics"] and b"install failed" in outputs["logs"]
    assert len(list(audit_dir.glob("audit.*.jsonl"))) >= 1
    for name, data in outputs.items():
        for s in secrets_:
            for form in forms(s):
                assert form not in data, f"key material found in {name}"
    await asyncio.sleep(0)
