"""Request bodies: a size guard, JSON only, finite numbers only, and 422s that never echo a large input back.

- `BodySizeLimit` (ASGI middleware) answers 413 naming the limit, by Content-Length up front or by
  counting the chunks of a body sent without one.
- `JSONRoute` (an APIRoute class) answers 415 for a body that is not JSON, and 422 naming the field
  for a number JSON cannot carry back (NaN, Infinity, or one too large for a double, like 1e400) or
  a string holding half a surrogate pair (`"\\ud800"`, which no UTF-8 writer accepts), so no schema
  ever sees one. It parses with the standard library, as FastAPI does, so integers stay exact.
- `validation_error` is FastAPI's 422 body (`{"detail": [{type, loc, msg, ...}]}`) with each error's
  `input` kept only when it is small: a 10,001-task batch is not sent back to its client.
- `dumps` / `json_response` write JSON with orjson, falling back to the standard library for what
  orjson refuses (integers beyond 64 bits that a client sent and gets back).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping
from email.message import Message as MimeMessage
from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sparring.web import DEFAULT_MAX_BODY_BYTES

MAX_ECHOED_INPUT_BYTES = 256
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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

    def __init__(self, max_bytes: int, size: int, declared: bool) -> None:
        said = f"request body is {size} bytes" if declared else f"request body is over {max_bytes} bytes"
        how = "" if declared else f" (sent without Content-Length; {size} bytes read before stopping)"
        super().__init__(status_code=413, detail=f"{said}; the limit is {max_bytes} bytes (--max-body-bytes){how}")


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
            await send_json_error(send, 413, BodyTooLarge(self.max_bytes, declared, declared=True).detail)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes, received, declared=False)
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


# -- JSON ---------------------------------------------------------------------------------------------


class BodyError(ValueError):
    """A body no route accepts although it may parse (a non-finite number, half a surrogate pair), and where."""

    def __init__(self, loc: list[str | int], message: str, kind: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {message}" if loc else message)
        self.loc = loc
        self.message = message
        self.kind = kind

    def http(self) -> HTTPException:
        """The 422 in FastAPI's own shape, so clients read it like every other validation error."""
        return HTTPException(422, [{"type": self.kind, "loc": ["body", *self.loc], "msg": self.message}])


class _NonFinite:
    """Stands in for a number JSON cannot carry, so the field holding it can be named."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def load_json(body: bytes) -> Any:
    """The parsed body (standard library rules); BodyError naming the field of a NaN, Infinity, 1e400 or lone surrogate.

    `json.JSONDecodeError` for text that is not JSON, as `json.loads` raises it.
    """
    found: list[_NonFinite] = []

    def constant(text: str) -> _NonFinite:
        marker = _NonFinite(text)
        found.append(marker)
        return marker

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return value if math.isfinite(value) else constant(text)

    try:
        value = json.loads(body, parse_constant=constant, parse_float=number)
        if found:
            loc = _path_to(value, found[0]) or []
            raise BodyError(loc, f"Input should be a finite number, got {found[0].text}", "finite_number")
        if _SURROGATE_ESCAPE.search(body):  # pairs are fine (an emoji); a lone half cannot be written back out
            loc = _lone_surrogate(value)
            if loc is not None:
                raise BodyError(loc, "Input should be valid Unicode, not half of a surrogate pair", "string_unicode")
    except RecursionError:
        raise BodyError([], "the body is nested too deeply", "json_invalid") from None
    except BodyError:
        raise
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        # not UTF-8, or an integer of more than 4300 digits
        raise BodyError([], f"the body cannot be read as JSON: {exc}", "json_invalid") from None
    return value


def _path_to(value: Any, target: _NonFinite) -> list[str | int] | None:
    if value is target:
        return []
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        path = _path_to(item, target)
        if path is not None:
            return [key, *path]
    return None


def _lone_surrogate(value: Any) -> list[str | int] | None:
    """Where a string (or a key) holds half of a UTF-16 surrogate pair, or None."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return []
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate(key) is not None:
            return [key.encode(errors="replace").decode()]
        path = _lone_surrogate(item)
        if path is not None:
            return [key, *path]
    return None


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (`application/json`, `application/*+json`); no header counts as JSON."""
    if not content_type:
        return True
    mime = MimeMessage()
    mime["content-type"] = content_type
    subtype = mime.get_content_subtype()
    return mime.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def unsupported_media_type(request: Request) -> str | None:
    """Why a request's body is refused as not JSON (415), or None."""
    if request.method not in _BODY_METHODS or request.headers.get("content-length") == "0":
        return None
    content_type = request.headers.get("content-type")
    if is_json(content_type):
        return None
    return f"Content-Type {content_type!r} is not JSON; send the body as application/json"


class _JSONRequest(Request):
    """A request whose `json()` refuses non-finite numbers, naming the field."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = load_json(await self.body())
            except BodyError as exc:
                raise exc.http() from None
        return self._json


class JSONRoute(APIRoute):
    """Routes whose bodies are JSON with finite numbers: 415 and 422 before any schema runs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            refusal = unsupported_media_type(request)
            if refusal is not None:
                raise HTTPException(415, refusal)
            return await handler(_JSONRequest(request.scope, request.receive))

        return route


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 body, each error's `input` kept only when small (and never a number JSON cannot hold)."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        shown = {key: value for key, value in error.items() if key not in ("input", "url")}
        if "input" in error and _small(error["input"]):
            shown["input"] = error["input"]
        errors.append(shown)
    return json_response({"detail": jsonable_encoder(errors)}, 422)


def _small(value: Any) -> bool:
    try:
        return len(orjson.dumps(value)) <= MAX_ECHOED_INPUT_BYTES and not _has_non_finite(value)
    except TypeError:
        return False


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False
