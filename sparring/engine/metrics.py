"""Aggregate metrics of a collection, as pure functions over rollout records.

`MetricsAccumulator` keeps a few numbers per record (never the record itself), so `collect` can
rewrite `<output>.metrics.json` as it goes over 100k episodes; `compute_metrics(records)` is the
same thing in one call. Model-call latencies and replica counts are not in the records: the caller
passes them in (`LatencyHistogram` per role, replica counts: a runner's `stats()`).

Definitions (aborted episodes have no reward and are left out of every reward figure):
- a *group* is the repeats of one task (`task_index`); a record without one is a group of its own;
- `mean@k`: the mean over groups of the group's mean reward, k being the group size;
- `pass@k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) per group with n
  scored repeats of which c reached `pass_threshold`, averaged over groups with n >= k; reported for
  k = 1, 2, 4, ... up to the largest group;
- `attribution`: per environment, episodes per attribution label (none, agent, user, tool, env;
  `unattributed` for records written before records had one) and, per check, the episodes with at
  least one `fault` reason from it (what made the failures someone else's).
- `staleness`: per episode, the current weight version when it ended minus the oldest version its
  policy tokens carry (core/versions.py), as a histogram; episodes whose staleness is unknown (labels
  that are not numbers) and episodes without versions (a server that reports none) are counted apart;
  `ended_stale` episodes ended aborted/stale by `max_staleness`, `dropped` ones collect left out of the
  output (`drop_stale`, never counted as episodes).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sparring.core.versions import STALE
from sparring.models.latency import LatencyHistogram

ROLES = ("policy", "user")


@dataclass
class MetricsAccumulator:
    """Running figures over records; `add` each record once, read `summary()` whenever."""

    pass_threshold: float = 1.0
    episodes: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_stop_reason: Counter[str] = field(default_factory=Counter)
    rewards: list[float] = field(default_factory=list)
    reward_sum: float = 0.0
    groups: dict[Any, list[float]] = field(default_factory=dict)
    turns: list[int] = field(default_factory=list)
    policy_calls: int = 0
    user_calls: int = 0
    tokens: dict[str, dict[str, int]] = field(
        default_factory=lambda: {role: {"prompt_tokens": 0, "completion_tokens": 0} for role in ROLES}
    )
    prefix_mismatches: int = 0
    episodes_with_mismatches: int = 0
    episode_wall_s: list[float] = field(default_factory=list)
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    fault_checks: dict[str, Counter[str]] = field(default_factory=dict)
    staleness: Counter[int] = field(default_factory=Counter)
    staleness_unknown: int = 0
    stale_dropped: int = 0
    """Episodes past `max_staleness` that collect left out of the output (`drop_stale`): not in `episodes`."""
    without_versions: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one finished episode."""
        self.episodes += 1
        self._add_attribution(record)
        self.by_status[str(record.get("status"))] += 1
        self.by_stop_reason[str(record.get("stop_reason"))] += 1
        reward = record.get("reward")
        if record.get("status") != "aborted" and reward is not None:
            self.rewards.append(float(reward))
            self.reward_sum += float(reward)
            task_index = record.get("task_index")
            key = ("task", task_index) if task_index is not None else ("episode", record.get("id"))
            self.groups.setdefault(key, []).append(float(reward))
        self.turns.append(int(record.get("num_turns") or 0))
        self.policy_calls += int(record.get("num_policy_calls") or 0)
        self.user_calls += int(record.get("num_user_calls") or 0)
        usage = record.get("usage") or {}
        for role in ROLES:
            for kind in ("prompt_tokens", "completion_tokens"):
                self.tokens[role][kind] += int((usage.get(role) or {}).get(kind) or 0)
        mismatches = int((record.get("trajectory") or {}).get("prefix_mismatches") or 0)
        self.prefix_mismatches += mismatches
        self.episodes_with_mismatches += mismatches > 0
        self.episode_wall_s.append(float((record.get("timing") or {}).get("wall_s") or 0.0))
        versions = record.get("weight_versions")
        if not versions:
            self.without_versions += 1
        elif versions.get("staleness") is None:
            self.staleness_unknown += 1
        else:
            self.staleness[int(versions["staleness"])] += 1

    def _add_attribution(self, record: Mapping[str, Any]) -> None:
        env = str(record.get("env"))
        attribution = record.get("attribution")
        attribution = attribution if isinstance(attribution, Mapping) else {}
        self.labels.setdefault(env, Counter())[str(attribution.get("label") or "unattributed")] += 1
        faults = {r.get("check") for r in attribution.get("reasons") or () if r.get("severity") == "fault"}
        self.fault_checks.setdefault(env, Counter()).update(str(check) for check in faults)

    @property
    def mean_reward(self) -> float | None:
        """The mean reward so far, kept as a running sum (a progress line reads it after every record)."""
        return self.reward_sum / len(self.rewards) if self.rewards else None

    def summary(
        self,
        *,
        wall_s: float | None = None,
        episodes_this_run: int | None = None,
        latency: Mapping[str, LatencyHistogram] | None = None,
        replicas: Mapping[str, Any] | None = None,
        invalid_tasks: int = 0,
    ) -> dict[str, Any]:
        """Every figure as a JSON-able dict; `wall_s` and `episodes_this_run` give episodes/s."""
        ran = self.episodes if episodes_this_run is None else episodes_this_run
        return {
            "episodes": self.episodes,
            "invalid_tasks": invalid_tasks,
            "by_status": dict(sorted(self.by_status.items())),
            "by_stop_reason": dict(sorted(self.by_stop_reason.items())),
            "reward": describe(self.rewards),
            "groups": group_metrics(self.groups.values(), self.pass_threshold),
            "turns": describe(self.turns),
            "calls": {"policy": self.policy_calls, "user": self.user_calls},
            "tokens": {
                role: {**counts, "per_episode": _ratio(counts["completion_tokens"], self.episodes)}
                for role, counts in self.tokens.items()
            },
            "prefix_mismatches": {"total": self.prefix_mismatches, "episodes": self.episodes_with_mismatches},
            "episode_wall_s": describe(self.episode_wall_s),
            "staleness": {
                "histogram": {str(k): n for k, n in sorted(self.staleness.items())},
                "unknown": self.staleness_unknown,
                "without_versions": self.without_versions,
                "ended_stale": self.by_stop_reason.get(STALE, 0),
                "dropped": self.stale_dropped,
            },
            "wall_s": wall_s,
            "episodes_this_run": ran,
            "episodes_per_s": _ratio(ran, wall_s),
            "model_call_latency_s": {role: h.summary() for role, h in (latency or {}).items()},
            "replicas": dict(replicas or {}),
            "attribution": {
                env: {
                    "labels": dict(sorted(labels.items())),
                    "fault_checks": dict(sorted(self.fault_checks[env].items())),
                }
                for env, labels in sorted(self.labels.items())
            },
        }


def compute_metrics(records: Iterable[Mapping[str, Any]], *, pass_threshold: float = 1.0, **run: Any) -> dict[str, Any]:
    """The metrics of a set of records (`run`: the keyword arguments of `MetricsAccumulator.summary`)."""
    accumulator = MetricsAccumulator(pass_threshold=pass_threshold)
    for record in records:
        accumulator.add(record)
    return accumulator.summary(**run)


def describe(values: list[float] | list[int]) -> dict[str, float | int | None]:
    """count, mean, population std, min, median, max (None when empty)."""
    if not values:
        return {"count": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def group_metrics(groups: Iterable[list[float]], pass_threshold: float = 1.0) -> dict[str, Any]:
    """mean@k and pass@k over groups of repeat rewards (see the module docstring)."""
    groups = [g for g in groups if g]
    if not groups:
        return {"count": 0, "sizes": {}, "mean_at_k": None, "pass_at_k": {}, "all_equal": 0}
    sizes = Counter(len(g) for g in groups)
    largest = max(sizes)
    pass_at_k = {}
    k = 1
    while k <= largest:
        estimates = [pass_at(len(g), sum(r >= pass_threshold for r in g), k) for g in groups if len(g) >= k]
        pass_at_k[str(k)] = statistics.fmean(estimates)
        k *= 2
    if str(largest) not in pass_at_k:
        estimates = [pass_at(len(g), sum(r >= pass_threshold for r in g), largest) for g in groups if len(g) >= largest]
        pass_at_k[str(largest)] = statistics.fmean(estimates)
    return {
        "count": len(groups),
        "sizes": {str(size): n for size, n in sorted(sizes.items())},
        "mean_at_k": statistics.fmean(statistics.fmean(g) for g in groups),
        "pass_threshold": pass_threshold,
        "pass_at_k": pass_at_k,
        "all_equal": sum(1 for g in groups if len(g) > 1 and max(g) == min(g)),
    }


def pass_at(n: int, c: int, k: int) -> float:
    """Probability that at least one of k repeats drawn from n (c of them passing) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return numerator / denominator if denominator else None
