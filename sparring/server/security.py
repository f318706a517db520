"""What every sparring HTTP service shares: bearer-token auth, a body-size guard, HTTP-request metrics.

Used by `sparring serve` (the rollout service) and `sparring gateway` (the OpenAI-compatible session
proxy), so both answer alike. In an app:

    registry = CollectorRegistry()
    auth = BearerAuth(resolve_api_key(args.api_key_file))           # None: auth off
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics, registry=registry)
    app.include_router(router, dependencies=[Depends(auth)])        # every route but the open ones
    app.add_api_route("/metrics", metrics_endpoint(registry), ...)  # Prometheus text format

`/healthz` is included without the dependency so probes work without a key. Tokens are compared in
constant time. The body guard answers 413 naming the limit, whether or not the client sent a
Content-Length. Metrics are labelled by route template (never the raw path), so cardinality stays bounded.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sparring.server.settings import API_KEY_VARIABLE, DEFAULT_MAX_BODY_BYTES


class SecurityError(ValueError):
    """A key setting that cannot be used; the message says what to fix."""


def resolve_api_key(api_key_file: str | Path | None = None) -> str | None:
    """The bearer token from `--api-key-file` (first line, stripped), else `$SPARRING_API_KEY`; None: auth off."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecurityError(f"--api-key-file {path}: cannot read it ({exc.strerror})") from None
        if not key:
            raise SecurityError(f"--api-key-file {path}: the file is empty")
        return key
    return os.environ.get(API_KEY_VARIABLE, "").strip() or None


class BearerAuth:
    """FastAPI dependency: 401 unless `Authorization: Bearer <key>` matches; a no-op when the key is None."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._expected = api_key.encode() if api_key else b""
        self._scheme = HTTPBearer(auto_error=False, description="Set when the server has an API key.")

    @property
    def enabled(self) -> bool:
        return self.api_key is not None

    async def __call__(self, request: Request) -> None:
        if self.api_key is None:
            return
        credentials: HTTPAuthorizationCredentials | None = await self._scheme(request)
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, self._expected):
            detail = "missing bearer token" if credentials is None else "invalid bearer token"
            raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


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
            await _send_json_error(send, BodyTooLarge(self.max_bytes, declared))
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
            await _send_json_error(send, exc)


class HttpMetrics:
    """ASGI middleware: requests by method, route template and status, and their duration (to the last byte)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "sparring_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "sparring_http_request_duration_seconds",
            "Time from request to the response's last byte (streams included), by method and route template.",
            ["method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = route_template(scope)
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.duration.labels(scope["method"], route).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """`/v1/sessions/{session_id}` rather than the raw path; `unmatched` for 404s (bounded label values)."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[], Awaitable[Response]]:
    """A route handler serving `registry` in Prometheus' text format."""

    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json_error(send: Send, exc: HTTPException) -> None:
    body = orjson.dumps({"detail": exc.detail})
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
