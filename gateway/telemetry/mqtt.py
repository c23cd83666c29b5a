"""MQTT telemetry publisher (aiomqtt): retained state, events, alarms, last will.

The daemon never waits on the broker. Retained state (gateway, peers,
alarms) is kept as "latest value per topic" and re-sent on every connect, so
it is never lost; events go through a bounded queue that drops the oldest
when full, and the number dropped is published as an event when the broker
is back. Call the publishing methods from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"


class MqttSettingsError(ValueError):
    """An MQTT setting is unusable; the message names the setting."""


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int = 1883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = field(default=None, repr=True)  # a path, not the secret
    topic_prefix: str = "qsgw"
    queue_size: int = 1000
    keepalive: int = 30
    qos: int = 1
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    publish_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise MqttSettingsError("mqtt.host must not be empty")
        if not 0 < self.port < 65536:
            raise MqttSettingsError("mqtt.port must be 1..65535")
        if self.queue_size < 1:
            raise MqttSettingsError("mqtt.queue_size must be >= 1")
        if self.keepalive < 1:
            raise MqttSettingsError("mqtt.keepalive must be >= 1 second")
        if self.qos not in (0, 1, 2):
            raise MqttSettingsError("mqtt.qos must be 0, 1 or 2")
        if (self.cert_file is None) != (self.key_file is None):
            raise MqttSettingsError("mqtt.cert_file and mqtt.key_file go together")
        if self.password_file is not None and self.username is None:
            raise MqttSettingsError("mqtt.password_file needs mqtt.username")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#\x00"):
            raise MqttSettingsError("mqtt.topic_prefix must be non-empty without + # or NUL")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise MqttSettingsError("mqtt.reconnect_min_s must be > 0 and <= reconnect_max_s")

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None


def topic_segment(name: str) -> str:
    """One topic level: MQTT wildcards, separators and control characters escaped."""
    out = []
    for ch in name:
        if ch in "/+#%" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out) or "%00"


def _read_password(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise MqttSettingsError(f"mqtt.password_file {path}: {exc.strerror}") from None


def client_args(s: MqttSettings, identifier: str,
                will: aiomqtt.Will | None = None) -> dict[str, Any]:
    """aiomqtt.Client's arguments for these settings, under `identifier` (one client ID
    per connection: a second connection under an ID kicks the first off the broker)."""
    args: dict[str, Any] = {"hostname": s.host, "port": s.port, "keepalive": s.keepalive,
                            "identifier": identifier, "timeout": s.publish_timeout_s}
    if will is not None:
        args["will"] = will
    if s.username is not None:
        args["username"] = s.username
        if s.password_file is not None:
            args["password"] = _read_password(s.password_file)
    if s.tls:
        args["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(s.ca_file) if s.ca_file else None,
            certfile=str(s.cert_file) if s.cert_file else None,
            keyfile=str(s.key_file) if s.key_file else None)
    return args


@dataclass
class _Message:
    topic: str
    payload: bytes
    retain: bool


class MqttPublisher:
    def __init__(
        self,
        settings: MqttSettings,
        gateway_id: str,
        *,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self._base = f"{settings.topic_prefix.rstrip('/')}/{topic_segment(gateway_id)}"
        self._on_drop = on_drop
        self._queue: deque[_Message] = deque()
        self._retained: dict[str, bytes] = {}
        self._dirty: dict[str, None] = {}  # ordered set of retained topics to (re)send
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._client: aiomqtt.Client | None = None
        self.connected = False
        self.dropped_total = 0
        self._drops_unreported = 0
        self.connects = 0

    # -- topics -----------------------------------------------------------

    def topic(self, *parts: str) -> str:
        return "/".join([self._base, *(topic_segment(p) for p in parts)])

    @property
    def status_topic(self) -> str:
        return f"{self._base}/status"

    @property
    def events_topic(self) -> str:
        return f"{self._base}/events"

    # -- non-blocking producers ---------------------------------------------

    def set_retained(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Latest state for a topic; never dropped, re-sent on each connect."""
        self._retained[topic] = _encode(payload)
        self._dirty.pop(topic, None)
        self._dirty[topic] = None
        self._kick()

    def publish_event(self, payload: Mapping[str, Any]) -> None:
        """An event on the events topic; the oldest is dropped when the queue is full."""
        self._enqueue(_Message(self.events_topic, _encode(payload), False))

    def queued(self) -> int:
        """Events waiting in the bounded queue."""
        return len(self._queue)

    def pending(self) -> int:
        """Everything not yet sent: queued events, retained updates, a drop report."""
        return len(self._queue) + len(self._dirty) + (1 if self._drops_unreported else 0)

    def _enqueue(self, msg: _Message) -> None:
        if len(self._queue) >= self.settings.queue_size:
            self._queue.popleft()
            self._count_drop()
        self._queue.append(msg)
        self._kick()

    def _count_drop(self) -> None:
        self.dropped_total += 1
        self._drops_unreported += 1
        if self._on_drop is not None:
            self._on_drop(1)

    def _kick(self) -> None:
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._wake = asyncio.Event()
            if self._queue or self._dirty:
                self._wake.set()
            self._task = asyncio.create_task(self._run(), name="qsgw-mqtt")

    async def stop(self, drain_timeout_s: float = 2.0) -> None:
        """Send what is queued (bounded by the timeout), mark offline, disconnect."""
        if self._task is None:
            return
        if self.connected:
            deadline = time.monotonic() + drain_timeout_s
            while (self._queue or self._dirty) and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._stopping = True
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await client.publish(self.status_topic, OFFLINE, qos=1, retain=True, timeout=2.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self.connected = False

    def _client_args(self) -> dict[str, Any]:
        return client_args(self.settings, f"qsgw-{topic_segment(self.gateway_id)}",
                           will=aiomqtt.Will(self.status_topic, OFFLINE, qos=1, retain=True))

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._stopping:
            try:
                async with aiomqtt.Client(**self._client_args()) as client:
                    self._client = client
                    self.connected = True
                    self.connects += 1
                    delay = self.settings.reconnect_min_s
                    log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
                    await client.publish(
                        self.status_topic,
                        ONLINE,
                        qos=1,
                        retain=True,
                        timeout=self.settings.publish_timeout_s,
                    )
                    # The broker may have lost retained state while we were away.
                    for t in self._retained:
                        self._dirty[t] = None
                    await self._pump(client)
            except (TimeoutError, aiomqtt.MqttError, OSError, MqttSettingsError) as exc:
                if self.connected:
                    log.warning("mqtt: connection lost: %s", type(exc).__name__)
                else:
                    log.warning(
                        "mqtt: cannot connect to %s:%d: %s",
                        self.settings.host,
                        self.settings.port,
                        exc,
                    )
            finally:
                self.connected = False
                self._client = None
            if self._stopping:
                return
            # Exponential backoff with jitter so a fleet does not reconnect in step.
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _pump(self, client: aiomqtt.Client) -> None:
        s = self.settings
        while True:
            self._wake.clear()
            if self._drops_unreported:
                n = self._drops_unreported
                report = {
                    "event": "telemetry_dropped",
                    "gateway": self.gateway_id,
                    "count": n,
                    "dropped_total": self.dropped_total,
                    "time": time.time(),
                }
                await client.publish(
                    self.events_topic, _encode(report), qos=s.qos, timeout=s.publish_timeout_s
                )
                self._drops_unreported -= n
            while self._dirty:
                topic = next(iter(self._dirty))
                payload = self._retained[topic]
                await client.publish(
                    topic, payload, qos=s.qos, retain=True, timeout=s.publish_timeout_s
                )
                if self._retained.get(topic) is payload:
                    self._dirty.pop(topic, None)
            while self._queue and not self._dirty and not self._drops_unreported:
                msg = self._queue.popleft()
                try:
                    await client.publish(
                        msg.topic,
                        msg.payload,
                        qos=s.qos,
                        retain=msg.retain,
                        timeout=s.publish_timeout_s,
                    )
                except BaseException:
                    # Not sent: put it back at the front (or count it if full meanwhile).
                    if len(self._queue) < s.queue_size:
                        self._queue.appendleft(msg)
                    else:
                        self._count_drop()
                    raise
            if not self._queue and not self._dirty and not self._drops_unreported:
                await self._idle(client)

    async def _idle(self, client: aiomqtt.Client) -> None:
        """Wait for work, or for the connection to drop (noticed at once, not
        at the next publish)."""
        # aiomqtt has no public "disconnected" signal; its private future is
        # used when present, else only the next publish notices.
        gone: asyncio.Future[None] | None = getattr(client, "_disconnected", None)
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {wake}
            if gone is not None:
                waiters.add(gone)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        if gone is not None and gone.done():
            exc = gone.exception()
            raise aiomqtt.MqttError(f"disconnected ({type(exc).__name__ if exc else 'clean'})")


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
