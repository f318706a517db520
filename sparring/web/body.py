"""Request and response bodies: a size guard, and JSON written alike by every face.

- `BodySizeLimit` (ASGI middleware) answers 413 naming the limit, by Content-Length up front or by
  counting the chunks of a body sent without one.
- `dumps` / `json_response` write JSON with orjson, falling back to the standard library for what
  orjson refuses (integers beyond 64 bits that a client sent and gets back).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sparring.web import DEFAULT_MAX_BODY_BYTES


def dumps(content: Any) -> bytes:
    """JSON bytes: orjson, or the standard library for integers beyond 64 bits."""
    try:
        return orjson.dumps(content)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status_code, media_type="application/json", headers=headers)


async def send_json_error(
    send: Send, status: int, detail: str, extra_headers: Mapping[bytes, bytes] | None = None
) -> None:
    """`{"detail": ...}` straight from middleware, before any route ran; the connection closes after it."""
    body = orjson.dumps({"detail": detail})
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(extra_headers or {}).items(),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- size ---------------------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """413 naming the limit; an HTTPException so FastAPI's body reading lets it through unchanged."""

    def __init__(self, max_bytes: int, size: int | None = None) -> None:
        size_text = f"{size} bytes" if size is not None else "more than that"
        super().__init__(
            status_code=413,
            detail=f"request body is {size_text}; the limit is {max_bytes} bytes (--max-body-bytes)",
        )


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, by Content-Length up front or by counting chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_json_error(send, 413, BodyTooLarge(self.max_bytes, declared).detail)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await send_json_error(send, exc.status_code, exc.detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
