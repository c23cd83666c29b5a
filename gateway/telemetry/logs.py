"""Structured logging: JSON lines when not on a terminal, peer and epoch on every line.

Bind the peer/epoch for a block of work with ``with bind(peer=..., epoch=...)``
(contextvars, so it follows asyncio tasks), or use ``peer_logger(log, peer)``.
Bytes arguments are never formatted into a line: they are replaced by their
length, a last guard against key material reaching a log.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("qsgw_peer", default=None)
_epoch: contextvars.ContextVar[int | None] = contextvars.ContextVar("qsgw_epoch", default=None)

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


@contextlib.contextmanager
def bind(*, peer: str | None = None, epoch: int | None = None) -> Iterator[None]:
    """Tag every log line inside the block (and tasks started in it)."""
    peer_tok = _peer.set(peer) if peer is not None else None
    epoch_tok = _epoch.set(epoch) if epoch is not None else None
    try:
        yield
    finally:
        if epoch_tok is not None:
            _epoch.reset(epoch_tok)
        if peer_tok is not None:
            _peer.reset(peer_tok)


def bind_peer(peer: str | None, epoch: int | None = None) -> None:
    """Set peer/epoch for the rest of the current task (e.g. a per-peer session task)."""
    _peer.set(peer)
    _epoch.set(epoch)


class PeerAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one peer; ``epoch`` may be updated as epochs advance."""

    def __init__(self, logger: logging.Logger, peer: str, epoch: int | None = None) -> None:
        super().__init__(logger, {"peer": peer, "epoch": epoch})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def peer_logger(logger: logging.Logger, peer: str, epoch: int | None = None) -> PeerAdapter:
    return PeerAdapter(logger, peer, epoch)


def _redact(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


class ContextFilter(logging.Filter):
    """Adds peer/epoch from the context unless the call gave them; redacts bytes args."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "peer", None) is None:
            record.peer = _peer.get()
        if getattr(record, "epoch", None) is None:
            record.epoch = _epoch.get()
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact(v) for k, v in record.args.items()}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "peer": getattr(record, "peer", None),
            "epoch": getattr(record, "epoch", None),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and k not in doc:
                doc[k] = _redact(v) if not isinstance(v, str | int | float | bool | None) else v
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(ctx)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        peer = getattr(record, "peer", None)
        epoch = getattr(record, "epoch", None)
        record.ctx = f"peer={peer or '-'} epoch={'-' if epoch is None else epoch}"
        return super().format(record)


_HANDLER_TAG = "_qsgw_handler"


def configure_logging(
    level: int | str = "INFO",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install one root handler (replacing a previous qsgw one); returns it."""
    if fmt not in ("auto", "json", "text"):
        raise ValueError("log format must be auto, json or text")
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(out, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_TAG, True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
