"""Model-call latencies as a log-bucketed histogram: fixed memory however long a run, mergeable across processes.

Buckets grow by 2% from 0.1 ms, so a percentile read from them is within 2% of the exact one; that is
plenty for p50/p90/p99 and costs one `log` and one dict update per call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

_BASE_S = 1e-4
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


class LatencyHistogram:
    """Counts of latencies per bucket; `quantile` answers with the bucket's upper edge."""

    __slots__ = ("buckets", "count", "max_s", "total_s")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        """Record one call's latency."""
        index = 0 if seconds <= _BASE_S else math.ceil(math.log(seconds / _BASE_S) / _LOG_GROWTH)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts to this one (another client, another worker process)."""
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def quantile(self, q: float) -> float | None:
        """The latency below which a fraction `q` of calls fell (None before any call)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_BASE_S * _GROWTH**index, self.max_s)
        return self.max_s

    def summary(self, quantiles: Iterable[float] = (0.5, 0.9, 0.99)) -> dict[str, float | int | None]:
        """Count, mean, max and the given percentiles, in seconds."""
        summary: dict[str, float | int | None] = {
            "count": self.count,
            "mean_s": self.total_s / self.count if self.count else None,
            "max_s": self.max_s if self.count else None,
        }
        for q in quantiles:
            summary[f"p{q * 100:g}_s"] = self.quantile(q)
        return summary

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form (for shipping from a worker process)."""
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "total_s": self.total_s, "max_s": self.max_s}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LatencyHistogram:
        """The inverse of `to_dict`."""
        histogram = cls()
        buckets = data["buckets"]
        assert isinstance(buckets, dict)
        histogram.buckets = {int(k): int(v) for k, v in buckets.items()}
        histogram.count = sum(histogram.buckets.values())
        histogram.total_s = float(data["total_s"])  # type: ignore[arg-type]
        histogram.max_s = float(data["max_s"])  # type: ignore[arg-type]
        return histogram
