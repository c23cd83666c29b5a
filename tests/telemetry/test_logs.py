"""Structured logs: JSON off a terminal, peer and epoch on every line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.telemetry.logs import bind, bind_peer, configure_logging, peer_logger


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_auto_is_json_off_a_terminal_with_peer_and_epoch(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("DEBUG", "auto", stream=buf)
    log = logging.getLogger("qsgw.test")
    log.info("before any peer")
    with bind(peer="ghent", epoch=7):
        log.info("rekeyed in %.1f s", 0.25)
    peer_logger(log, "redu", 3).warning("handshake failed", extra={"reason": "bad_mac"})
    got = lines(buf)
    assert got[0]["peer"] is None and got[0]["msg"] == "before any peer"
    assert (got[1]["peer"], got[1]["epoch"], got[1]["msg"]) == ("ghent", 7, "rekeyed in 0.2 s")
    assert got[2]["peer"] == "redu" and got[2]["epoch"] == 3 and got[2]["reason"] == "bad_mac"
    assert got[2]["level"] == "warning"


async def test_binding_follows_each_task(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging("INFO", "json", stream=buf)
    log = logging.getLogger("qsgw.test")

    async def session(peer: str, epoch: int) -> None:
        bind_peer(peer, epoch)
        await asyncio.sleep(0)
        log.info("tick")

    await asyncio.gather(session("a", 1), session("b", 2))
    assert sorted((x["peer"], x["epoch"]) for x in lines(buf)) == [("a", 1), ("b", 2)]


def test_text_format_and_bytes_never_printed(restore_root: None) -> None:
    buf = io.StringIO()
    configure_logging(logging.INFO, "text", stream=buf)
    secret = bytes(range(32))
    with bind(peer="p1", epoch=2):
        logging.getLogger("qsgw.test").info("installed %s", secret)
    out = buf.getvalue()
    assert "peer=p1 epoch=2" in out and "installed <32 bytes>" in out
    assert secret.hex() not in out and repr(secret) not in out


def test_bad_format_refused(restore_root: None) -> None:
    with pytest.raises(ValueError, match="auto, json or text"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]
