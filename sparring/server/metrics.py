"""The service's Prometheus metrics: episodes by outcome, tokens and model-call latency per role, load.

HTTP-request metrics come from `security.HttpMetrics`; everything lives in one registry per app, so
several apps in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

# The histogram's bucket i ends at _BASE_S * _GROWTH**i (what its `quantile` answers with).
from sparring.models.latency import _BASE_S, _GROWTH, LatencyHistogram
from sparring.server.gate import EpisodeGate

MODEL_CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServiceMetrics:
    """Counters fed from each finished record, gauges read from the gate at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        gate: EpisodeGate,
        latency: Callable[[], dict[str, LatencyHistogram]],
    ) -> None:
        self.episodes = Counter(
            "sparring_episodes",
            "Episodes finished, by environment, status and stop_reason.",
            ["env", "status", "stop_reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "sparring_tokens",
            "Tokens per role (policy, user) and kind (prompt, completion), as the model servers reported them.",
            ["role", "kind"],
            registry=registry,
        )
        self.episode_seconds = Histogram(
            "sparring_episode_duration_seconds",
            "Wall time of finished episodes.",
            ["env"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        in_flight = Gauge("sparring_episodes_in_flight", "Episodes playing right now.", registry=registry)
        in_flight.set_function(lambda: gate.running)
        queued = Gauge("sparring_episode_queue_depth", "Episodes admitted but waiting for a slot.", registry=registry)
        queued.set_function(lambda: gate.queued)
        registry.register(_ModelLatencyCollector(latency))

    def observe(self, record: dict[str, Any]) -> None:
        """Count one finished episode."""
        self.episodes.labels(record["env"], record["status"], record["stop_reason"] or "").inc()
        self.episode_seconds.labels(record["env"]).observe(record["timing"]["wall_s"])
        for role, usage in record["usage"].items():
            self.tokens.labels(role, "prompt").inc(usage.get("prompt_tokens", 0))
            self.tokens.labels(role, "completion").inc(usage.get("completion_tokens", 0))


class _ModelLatencyCollector(Collector):
    """`sparring_model_call_seconds{role}`: the model clients' own latency histograms, read at scrape time."""

    def __init__(self, latency: Callable[[], dict[str, LatencyHistogram]]) -> None:
        self._latency = latency

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "sparring_model_call_seconds",
            "Latency of successful model calls per role (retries and backoff included).",
            labels=["role"],
        )
        for role, histogram in sorted(self._latency().items()):
            family.add_metric([role], _cumulative_buckets(histogram), histogram.total_s)
        yield family


def _cumulative_buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets from the log-bucketed histogram (each count goes by its bucket's upper edge)."""
    edges = sorted((_BASE_S * _GROWTH**index, n) for index, n in histogram.buckets.items())
    out: list[tuple[str, float]] = []
    seen = 0
    position = 0
    for bound in MODEL_CALL_BUCKETS_S:
        while position < len(edges) and edges[position][0] <= bound:
            seen += edges[position][1]
            position += 1
        out.append((str(bound), float(seen)))
    out.append(("+Inf", float(histogram.count)))
    return out
