"""Fetch the newest signed audit checkpoint from the MQTT broker (its retained message).

The daemon publishes each checkpoint retained at `<prefix>/<gateway>/audit/checkpoint`
(see `Telemetry.audit_checkpoint`); `qsgw audit verify --checkpoint-from-broker CONFIG`
reads it back with the broker settings of that gateway config, so an auditor
checks the trail against what left the box, not against a file beside the trail
that whoever shortened the trail could have shortened too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.telemetry.mqtt import MqttSettings, client_args, topic_segment


class CheckpointFetchError(Exception):
    """No checkpoint could be read from the broker; the message says why."""


def checkpoint_topic(topic_prefix: str, gateway_id: str) -> str:
    """Where `Telemetry.audit_checkpoint` publishes (MqttPublisher.topic("audit", "checkpoint"))."""
    return f"{topic_prefix.rstrip('/')}/{topic_segment(gateway_id)}/audit/checkpoint"


def settings_from_config(config: Any) -> MqttSettings:
    """The broker settings of a `GatewayConfig`'s `telemetry.mqtt` section."""
    m = config.telemetry.mqtt
    if m is None:
        raise CheckpointFetchError("the config has no telemetry.mqtt section: no broker to ask")
    return MqttSettings(host=m.host, port=m.port, ca_file=m.ca_file, cert_file=m.cert_file,
                        key_file=m.key_file, username=m.username, password_file=m.password_file,
                        topic_prefix=m.topic_prefix, keepalive=m.keepalive_s)


def _client_args(s: MqttSettings, gateway_id: str) -> dict[str, Any]:
    # Not the daemon's client ID: a second connection under it would kick the daemon off.
    return client_args(s, f"qsgw-audit-verify-{topic_segment(gateway_id)}")


async def fetch_checkpoint(settings: MqttSettings, gateway_id: str,
                           timeout_s: float = 10.0) -> dict[str, Any]:
    """The retained checkpoint of `gateway_id`; CheckpointFetchError when there is none
    (the broker answers a subscription with retained messages at once, so waiting
    `timeout_s` without one means none is retained)."""
    topic = checkpoint_topic(settings.topic_prefix, gateway_id)
    try:
        async with asyncio.timeout(timeout_s):
            async with aiomqtt.Client(**_client_args(settings, gateway_id)) as client:
                await client.subscribe(topic, qos=1)
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes | bytearray):
                        continue
                    try:
                        doc = json.loads(bytes(payload))
                    except ValueError:
                        raise CheckpointFetchError(f"{topic}: the retained message is not "
                                                   "JSON") from None
                    if not isinstance(doc, dict):
                        raise CheckpointFetchError(f"{topic}: the retained message is not "
                                                   "a checkpoint")
                    return doc
    except TimeoutError:
        raise CheckpointFetchError(f"no retained checkpoint at {topic} on {settings.host}:"
                                   f"{settings.port} within {timeout_s:g} s") from None
    except aiomqtt.MqttError as exc:
        raise CheckpointFetchError(f"broker {settings.host}:{settings.port}: {exc}") from None
    raise CheckpointFetchError(f"{topic}: the broker closed the subscription")


def fetch_for_config(config_path: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    """Load a gateway config and fetch its gateway's newest checkpoint."""
    from gateway.config import load_config

    cfg = load_config(config_path, check_files=False)  # an auditor's copy: no KME files
    return asyncio.run(fetch_checkpoint(settings_from_config(cfg), cfg.gateway.id, timeout_s))
