"""Every single-byte flip, truncation and extension of every message is refused,
and the machine still completes with the genuine message afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gateway.handshake import (
    HandshakeFailed,
    HandshakeParams,
    InitiatorHandshake,
    InstallKey,
    Rejected,
    ResponderHandshake,
    SendMessage,
)
from tests.crypto.conftest import NOW, drive


def _mutants(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        m = bytearray(data)
        m[i] ^= 0x01 if i % 2 else 0x80
        yield bytes(m)
    for n in (0, 1, len(data) // 2, len(data) - 1):
        yield data[:n]
    yield data + b"\x00"
    yield data + data[:1]


def _check(feed: Callable[[bytes], list[object]], genuine: bytes) -> int:
    refused = 0
    for mutant in _mutants(genuine):
        actions = feed(mutant)
        assert actions and all(isinstance(a, Rejected) for a in actions), actions
        refused += 1
    final = feed(genuine)
    assert not any(isinstance(a, (Rejected, HandshakeFailed)) for a in final)
    assert refused == len(genuine) + 6
    return refused


@pytest.fixture(scope="module")
def recorded(identities: tuple[object, object]) -> tuple[HandshakeParams, HandshakeParams, object]:
    from tests.crypto.conftest import make_params

    ip, rp = make_params(identities)  # type: ignore[arg-type]
    run, _, _ = drive(ip, rp)
    return ip, rp, run


def _responder_after_init(ip: HandshakeParams, rp: HandshakeParams) -> tuple[
    InitiatorHandshake, ResponderHandshake, bytes
]:
    """A fresh pair run up to RESP sent, QKD off for brevity."""
    from dataclasses import replace

    from gateway.handshake import QkdPolicy

    ip, rp = replace(ip, qkd_policy=QkdPolicy.OFF), replace(rp, qkd_policy=QkdPolicy.OFF)
    ini = InitiatorHandshake(ip, 1, NOW)
    init = next(a for a in ini.start(NOW) if isinstance(a, SendMessage)).data
    res = ResponderHandshake(rp, 0, NOW)
    resp = next(a for a in res.on_message(init, NOW) if isinstance(a, SendMessage)).data
    return ini, res, resp


def test_init_mutations(recorded: tuple[HandshakeParams, HandshakeParams, object]) -> None:
    _ip, rp, run = recorded
    res = ResponderHandshake(rp, 0, NOW)
    assert _check(lambda d: res.on_message(d, NOW), run.init) > 4000  # type: ignore[attr-defined]


def test_resp_finish_done_mutations(
    recorded: tuple[HandshakeParams, HandshakeParams, object],
) -> None:
    ip, rp, _ = recorded
    ini, _res, resp = _responder_after_init(ip, rp)
    assert _check(lambda d: ini.on_message(d, NOW), resp) > 3500
    # The genuine RESP was accepted last: FINISH is the initiator's latest message.
    ini2, res2, resp2 = _responder_after_init(ip, rp)
    finish = next(a for a in ini2.on_message(resp2, NOW) if isinstance(a, SendMessage)).data
    _check(lambda d: res2.on_message(d, NOW), finish)
    done = next(a for a in res2.on_installed(NOW) if isinstance(a, SendMessage)).data
    out: list[object] = []

    def feed_done(d: bytes) -> list[object]:
        acts = ini2.on_message(d, NOW)
        out.extend(acts)
        return list(acts)

    _check(feed_done, done)
    assert isinstance(out[-1], InstallKey)
