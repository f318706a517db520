"""The gateway's Prometheus metrics: sessions open and ended, calls by result, recorded tokens.

HTTP-request metrics come from `sparring.web.metrics.HttpMetrics`, in the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GatewayMetrics:
    """Counters and gauges of one gateway, in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("sparring_gateway_sessions_active", "Gateway sessions in flight.", registry=registry)
        self.ended = Counter(
            "sparring_gateway_sessions_ended", "Gateway sessions ended, by status.", ["status"], registry=registry
        )
        self.calls = Counter(
            "sparring_gateway_calls",
            "Chat calls through the gateway, by result (recorded, unrecorded, rejected, upstream_error).",
            ["result"],
            registry=registry,
        )
        self.tokens = Counter(
            "sparring_gateway_completion_tokens", "Sampled tokens recorded into ledgers.", registry=registry
        )
