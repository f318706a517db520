"""HTTP-request metrics for every sparring face: requests by method, route template and status, and durations.

Labelled by route template (never the raw path, which carries session ids), so cardinality stays
bounded; a request answered before routing (401, 413, or an unknown path) counts as `unmatched`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
    """`/v1/sessions/{session_id}` rather than the raw path; `unmatched` when no route took the request."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[], Awaitable[Response]]:
    """A route handler serving `registry` in Prometheus' text format."""

    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
