"""The KME simulator's HTTP replies: JSON responses, an answer raised at once, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class Reply(Exception):
    """Raised inside a handler to answer at once."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message}
        if self.details:
            body["details"] = self.details
        return json_response(body, self.status)


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


def bad(message: str) -> Reply:
    return Reply(400, message)


async def json_body(request: web.Request, allow_empty: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise bad("request body must be a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad("request body must be a JSON object")
    return body
