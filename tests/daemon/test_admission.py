"""Admission before work: INIT checks, fixed refusal counters, caps, bounded logs, abort order."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.crypto.suites import lookup_suite
from gateway.daemon.admission import REFUSAL_REASONS, FloodMonitor, InitAdmission, RefusalCounters
from gateway.daemon.channel import SessionFailure
from gateway.daemon.conntable import BoundedReader, ConnectionTable
from gateway.daemon.framing import FrameError, read_frame
from gateway.daemon.keypolicy import KeyBudget
from gateway.daemon.keysupply import DeliveredKey
from gateway.daemon.peer_status import PeerStatus
from gateway.daemon.ratelog import RateLimitedLog
from gateway.daemon.session import PeerSession
from gateway.handshake import (
    HandshakeParams,
    InitiatorHandshake,
    QkdKey,
    ResponderHandshake,
    SendMessage,
)
from gateway.handshake.codec import decode
from gateway.handshake.messages import Init
from gateway.identity import LocalIdentity
from gateway.journal import MAX_EPOCH, EpochRangeError, Journal
from gateway.telemetry import Telemetry

PEER_ADDR = "192.0.2.10"


@pytest.fixture(scope="module")
def ids() -> tuple[LocalIdentity, LocalIdentity]:
    return LocalIdentity.generate(), LocalIdentity.generate()


def _params(ids: tuple[LocalIdentity, LocalIdentity]) -> tuple[HandshakeParams, HandshakeParams]:
    a, b = ids
    suite = lookup_suite("default")
    return (HandshakeParams("gw-a", "gw-b", a, b.public, suite),
            HandshakeParams("gw-b", "gw-a", b, a.public, suite))


def _init(ip: HandshakeParams, epoch: int, now: float, key_id: str | None = None) -> bytes:
    m = InitiatorHandshake(ip, epoch, now)
    m.start(now)
    key = QkdKey(key_id or os.urandom(16).hex(), os.urandom(32))
    actions = m.on_qkd_keys([key], now)
    return next(a.data for a in actions if isinstance(a, SendMessage))


def _admission(last: int = 0) -> InitAdmission:
    return InitAdmission("gw-b", 60, lambda peer: {PEER_ADDR} if peer == "gw-a" else set(),
                         lambda peer: last)


def test_admission_refuses_each_stranger_case_before_the_session(ids: Any) -> None:
    ip, _ = _params(ids)
    now = time.time()
    text = ids[0].public.to_text()
    good = decode(_init(ip, 5, now))
    assert isinstance(good, Init)
    adm = _admission(last=3)
    assert adm.check(good, "192.0.2.99", text).reason == "wrong_source"  # type: ignore[union-attr]
    other = LocalIdentity.generate().public.to_text()
    assert adm.check(good, PEER_ADDR, other).reason == "bad_signature"  # type: ignore[union-attr]
    old = decode(_init(ip, 3, now))
    assert adm.check(old, PEER_ADDR, text).reason == "replay"  # type: ignore[arg-type,union-attr]
    stale = decode(_init(ip, 6, now - 600))
    assert adm.check(stale, PEER_ADDR, text).reason == "stale"  # type: ignore[arg-type,union-attr]
    huge = decode(_init(ip, MAX_EPOCH + 1, now))
    assert adm.check(huge, PEER_ADDR, text).reason == "epoch_out_of_range"  # type: ignore[arg-type,union-attr]
    assert adm.check(good, PEER_ADDR, text) is None  # admitted...
    # ...and the same INIT replayed while it is still in flight is refused at once.
    assert adm.check(good, PEER_ADDR, text).reason == "replay"  # type: ignore[union-attr]


def test_refusal_counters_have_fixed_keys() -> None:
    c = RefusalCounters()
    for i in range(100):
        c.count(f"bad_frame (frame length {i} outside 1..65536)")
    c.count("bad_signature")
    doc = c.as_dict()
    assert set(doc) == {*REFUSAL_REASONS, "other"}
    assert doc["other"] == 100 and doc["bad_signature"] == 1


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), burst=3, window_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.ratelog"):
        written = sum(rl.warning("bad_signature", "refused %d", i) for i in range(1000))
        assert written == 3 and len(caplog.records) == 3
        now[0] = 11.0
        rl.warning("bad_signature", "refused again")
    assert "997 similar suppressed" in caplog.records[-1].getMessage()


def test_flood_monitor_raises_one_alarm_then_clears() -> None:
    now = [0.0]
    seen: list[bool] = []
    fm = FloodMonitor(lambda active, detail: seen.append(active), threshold=10, window_s=10,
                      quiet_s=5, clock=lambda: now[0])
    for _ in range(1000):
        now[0] += 0.001
        fm.refused()
    assert seen == [True]
    now[0] += 6
    fm.tick()
    assert seen == [True, False]


def test_connection_table_evicts_oldest_pending_never_admitted() -> None:
    closed: list[int] = []
    t = ConnectionTable(max_total=10, max_per_source=3, max_per_peer=1)
    conns = [t.open(PEER_ADDR, lambda i=i: closed.append(i)) for i in range(3)]
    assert not any(isinstance(c, str) for c in conns)
    assert t.admit(conns[0], "gw-a")  # type: ignore[arg-type]
    assert not t.admit(conns[1], "gw-a")  # type: ignore[arg-type]  # per-peer cap
    assert not isinstance(t.open(PEER_ADDR, lambda: closed.append(3)), str)
    assert closed == [1]  # the oldest *pending* one made room, not the admitted one
    t2 = ConnectionTable(max_total=10, max_per_source=1, max_per_peer=1)
    first = t2.open(PEER_ADDR, lambda: None)
    t2.admit(first, "gw-a")  # type: ignore[arg-type]
    assert t2.open(PEER_ADDR, lambda: None) == "source_busy"


async def test_bounded_reader_ends_a_frame_flood() -> None:
    reader = asyncio.StreamReader()
    for _ in range(10):
        reader.feed_data(struct.pack(">I", 3) + b"abc")
    bounded = BoundedReader(reader, max_frames=4, max_bytes=1000)
    for _ in range(4):
        assert await read_frame(bounded, 100, 1) == b"abc"  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="4 frames"):
        await read_frame(bounded, 100, 1)  # type: ignore[arg-type]


def test_journal_refuses_epochs_it_cannot_store(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        j.record_epoch("gw-a", MAX_EPOCH)
        with pytest.raises(EpochRangeError, match="outside 1"):
            j.record_epoch("gw-a", MAX_EPOCH + 1)
        assert j.last_epoch("gw-a") == MAX_EPOCH


class _Channel:
    def __init__(self, frames: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.frames = list(frames or [])

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive(self) -> bytes:
        if not self.frames:
            raise FrameError("closed", hung_up=True)
        return self.frames.pop(0)


class _Keys:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def fetch_by_id(self, *args: Any) -> list[DeliveredKey]:
        self.calls.append(args)
        raise AssertionError("dec_keys called for a key_ID the journal refused")


def _session(journal: Journal, keys: Any, initiator: bool) -> PeerSession:
    s = PeerSession.__new__(PeerSession)
    s.ctx = SimpleNamespace(journal=journal, keys=keys, telemetry=Telemetry("gw"))  # type: ignore[assignment]
    s.peer = SimpleNamespace(id="gw-a" if not initiator else "gw-b",  # type: ignore[assignment]
                             sae_id="SAE_X")
    s.initiator = initiator
    s.status = PeerStatus("gw", "x", "required")
    s._prefetched = None
    s._key_origins = {}
    s._budget = KeyBudget()
    s._attempt_spent = False
    s.log = logging.getLogger("t.session")  # type: ignore[assignment]
    return s


async def test_a_refused_key_id_stops_the_init_and_the_dec_keys(ids: Any, tmp_path: Path) -> None:
    ip, rp = _params(ids)
    reused = "0f" * 16
    with Journal(tmp_path / "i.db") as j:
        j.consume("gw-b", [reused], epoch=None)
        s = _session(j, None, initiator=True)
        s._prefetched = [DeliveredKey(reused, os.urandom(32))]
        channel = _Channel()
        m = InitiatorHandshake(ip, 1, time.time())
        with pytest.raises(SessionFailure, match="key_reuse"):
            await s._pump(m, m.start(time.time()), channel)  # type: ignore[arg-type]
        assert channel.sent == []  # INIT never left
    with Journal(tmp_path / "r.db") as j:
        j.consume("gw-a", [reused], epoch=None)
        keys = _Keys()
        s = _session(j, keys, initiator=False)
        r = ResponderHandshake(rp, 0, time.time())
        actions = r.on_message(_init(ip, 1, time.time(), reused), time.time())
        with pytest.raises(SessionFailure, match="key_reuse"):
            await s._pump(r, actions, _Channel())  # type: ignore[arg-type]
        assert keys.calls == []


async def test_the_first_refused_frame_ends_the_handshake(ids: Any, tmp_path: Path) -> None:
    ip, rp = _params(ids)
    with Journal(tmp_path / "r.db") as j:
        s = _session(j, None, initiator=False)
        s.ctx.keys = SimpleNamespace(fetch_by_id=_deliver)  # type: ignore[attr-defined]
        r = ResponderHandshake(rp, 0, time.time())
        actions = r.on_message(_init(ip, 1, time.time(), "ab" * 16), time.time())
        garbage = [b"\x00" * 64 for _ in range(1000)]
        channel = _Channel(garbage)
        with pytest.raises(SessionFailure, match="decode_error"):
            await s._pump(r, actions, channel)  # type: ignore[arg-type]
        assert len(channel.frames) == 999  # one refused frame, then the connection ends


async def _deliver(peer: str, sae: str, ids: list[str]) -> list[DeliveredKey]:
    return [DeliveredKey(i, os.urandom(32)) for i in ids]
