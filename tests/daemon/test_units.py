"""The daemon's small parts: framing limits, per-source rate limit, sd_notify, status table."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.framing import FrameError, read_frame, write_frame
from gateway.daemon.ratelimit import RateLimiter
from gateway.daemon.sdnotify import SystemdNotifier
from gateway.daemon.status_cli import format_table


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_frame_round_trip_and_limits() -> None:
    assert await read_frame(_reader(struct.pack(">I", 3) + b"abc"), 10, 1) == b"abc"
    with pytest.raises(FrameError, match=r"outside 1\.\.10"):
        await read_frame(_reader(struct.pack(">I", 11) + b"x" * 11), 10, 1)
    with pytest.raises(FrameError, match="outside"):
        await read_frame(_reader(struct.pack(">I", 0)), 10, 1)
    with pytest.raises(FrameError, match="closed after 6 bytes") as cut:  # header + 2
        await read_frame(_reader(struct.pack(">I", 5) + b"ab"), 10, 1)
    assert not cut.value.hung_up
    with pytest.raises(FrameError, match="closed after 0 bytes") as gone:
        await read_frame(_reader(b""), 10, 1)
    assert gone.value.hung_up  # a clean hang-up where a frame should start
    with pytest.raises(FrameError, match="no complete frame"):
        await read_frame(_reader(struct.pack(">I", 5), eof=False), 10, 0.05)


async def test_write_frame_prefixes_the_length() -> None:
    server_got: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        server_got.append(await read_frame(r, 100, 2))
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await write_frame(writer, b"hello", 2)
    writer.close()
    for _ in range(100):
        if server_got:
            break
        await asyncio.sleep(0.01)
    server.close()
    assert server_got == [b"hello"]


def test_rate_limiter_allows_bursts_then_refills_per_source() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2)
    assert limiter.allow("192.0.2.1", 0.0) and limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("192.0.2.1", 0.1)
    assert limiter.allow("192.0.2.2", 0.1)  # another source has its own bucket
    assert limiter.allow("192.0.2.1", 1.2)  # refilled


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate_per_s=1.0, max_sources=10)
    for i in range(1000):
        limiter.allow(f"198.51.100.{i % 250}/{i}", float(i))
    assert len(limiter._buckets) <= 10


def test_sd_notify_reaches_a_real_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        notifier = SystemdNotifier()
        assert notifier.enabled and notifier.watchdog_interval_s == 2.0
        notifier.ready("2 peers")
        assert sock.recv(256) == b"READY=1\nSTATUS=2 peers"
        notifier.watchdog()
        assert sock.recv(256) == b"WATCHDOG=1"


def test_sd_notify_outside_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready()  # no socket, no error


def test_status_table_hides_errors_older_than_the_key() -> None:
    peer: dict[str, Any] = {
        "peer": "gw-b", "role": "initiator", "policy": "required", "state": "ok", "epoch": 7,
        "key_age_s": 3.0, "sources": ["QKD", "ML-KEM-768", "X25519"],
        "tunnel": {"up": True}, "last_error": "transport: reset", "last_error_at": 10.0,
        "installed_at": 20.0}
    doc: dict[str, Any] = {"gateway": "gw-a", "uptime_s": 30, "peers": [peer]}
    table = format_table(doc)
    assert "gw-b" in table and "QKD+ML-KEM-768+X25519" in table and "transport" not in table
    peer["last_error_at"] = 25.0
    assert "transport: reset" in format_table(doc)
