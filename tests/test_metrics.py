"""Aggregate metrics on a known set of records, and the latency histogram."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sparring.engine.metrics import compute_metrics, pass_at
from sparring.models.latency import LatencyHistogram


def record(task_index: int | None, reward: float | None, *, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"t{task_index}-{reward}-{status}",
        "task_index": task_index,
        "status": status,
        "stop_reason": extra.get("stop_reason", "env_done" if status == "completed" else "model_error"),
        "reward": reward,
        "num_turns": extra.get("turns", 3),
        "num_policy_calls": 4,
        "num_user_calls": 6,
        "usage": {
            "policy": {"prompt_tokens": 100, "completion_tokens": 10},
            "user": {"prompt_tokens": 50, "completion_tokens": 5},
        },
        "trajectory": {"prefix_mismatches": extra.get("mismatches", 0)},
        "timing": {"wall_s": extra.get("wall_s", 1.0)},
    }


RECORDS = [
    # group 0: rewards 1, 0, 1 -> mean 2/3, 2 passes of 3
    record(0, 1.0),
    record(0, 0.0, turns=5, mismatches=2),
    record(0, 1.0),
    # group 1: 0.5, 0.5 (all equal), plus an aborted repeat that has no reward
    record(1, 0.5, status="truncated", stop_reason="max_turns"),
    record(1, 0.5),
    record(1, None, status="aborted"),
    # a record without a task index is a group of its own
    record(None, 0.0, wall_s=3.0),
]


def test_reward_counts_tokens_and_mismatches_on_known_records() -> None:
    m = compute_metrics(RECORDS, wall_s=2.0, invalid_tasks=1)
    assert m["episodes"] == 7 and m["invalid_tasks"] == 1
    assert m["by_status"] == {"aborted": 1, "completed": 5, "truncated": 1}
    assert m["by_stop_reason"] == {"env_done": 5, "max_turns": 1, "model_error": 1}
    rewards = [1.0, 0.0, 1.0, 0.5, 0.5, 0.0]
    mean = sum(rewards) / 6
    assert m["reward"]["count"] == 6 and m["reward"]["mean"] == pytest.approx(mean)
    assert m["reward"]["std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in rewards) / 6))
    assert (m["reward"]["min"], m["reward"]["median"], m["reward"]["max"]) == (0.0, 0.5, 1.0)
    assert m["turns"]["max"] == 5 and m["turns"]["count"] == 7
    assert m["calls"] == {"policy": 28, "user": 42}
    assert m["tokens"]["policy"] == {"prompt_tokens": 700, "completion_tokens": 70, "per_episode": 10.0}
    assert m["prefix_mismatches"] == {"total": 2, "episodes": 1}
    assert m["episodes_per_s"] == 3.5 and m["episode_wall_s"]["max"] == 3.0


def test_mean_and_pass_at_k_per_group() -> None:
    groups = compute_metrics(RECORDS)["groups"]
    assert groups["count"] == 3 and groups["sizes"] == {"1": 1, "2": 1, "3": 1}
    assert groups["mean_at_k"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    # pass@1: group 0 has 2 of 3 passing; group 1 none (0.5 < 1.0); the lone record none.
    assert groups["pass_at_k"]["1"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    # pass@2 over groups with at least 2 scored repeats: group 0 -> 1 - C(1,2)/C(3,2) = 1; group 1 -> 0.
    assert groups["pass_at_k"]["2"] == pytest.approx(0.5)
    assert groups["pass_at_k"]["3"] == pytest.approx(1.0)
    assert groups["all_equal"] == 1


def test_pass_at_matches_the_combinatorial_definition() -> None:
    assert pass_at(5, 0, 3) == 0.0
    assert pass_at(5, 5, 1) == 1.0
    assert pass_at(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))


def attributed(env: str, label: str, *faults: str) -> dict[str, Any]:
    reasons = [{"check": check, "actor": "user", "severity": "fault", "detail": "", "where": None} for check in faults]
    note = {"check": "policy_tool_errors", "actor": "agent", "severity": "note", "detail": "", "where": None}
    return {**record(0, 0.0), "env": env, "attribution": {"label": label, "reasons": [*reasons, note], "judge": None}}


def test_attributions_are_counted_per_environment_with_the_checks_that_decided() -> None:
    records = [
        attributed("support-desk", "user", "echoed_policy", "echoed_policy", "spoke_as_assistant"),
        attributed("support-desk", "user", "echoed_policy"),
        attributed("support-desk", "agent"),
        attributed("tictactoe", "none"),
        {**record(0, None, status="aborted"), "env": "tictactoe"},  # written before records had an attribution
    ]
    assert compute_metrics(records)["attribution"] == {
        "support-desk": {
            "labels": {"agent": 1, "user": 2},
            "fault_checks": {"echoed_policy": 2, "spoke_as_assistant": 1},
        },
        "tictactoe": {"labels": {"none": 1, "unattributed": 1}, "fault_checks": {}},
    }


def test_no_records_gives_empty_figures_not_errors() -> None:
    m = compute_metrics([])
    assert m["episodes"] == 0 and m["reward"]["mean"] is None and m["groups"]["mean_at_k"] is None
    assert m["episodes_per_s"] is None
    assert m["attribution"] == {}


def test_latency_percentiles_are_within_the_bucket_width_and_merge() -> None:
    first, second = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 101):
        (first if ms % 2 else second).add(ms / 1000)
    first.merge(LatencyHistogram.from_dict(second.to_dict()))
    summary = first.summary()
    assert summary["count"] == 100 and summary["max_s"] == pytest.approx(0.1)
    assert summary["p50_s"] == pytest.approx(0.050, rel=0.021)
    assert summary["p90_s"] == pytest.approx(0.090, rel=0.021)
    assert summary["p99_s"] == pytest.approx(0.099, rel=0.021)
    assert summary["mean_s"] == pytest.approx(0.0505)
