"""sparring's `/run` and `/aggregate_metrics` checked with NeMo Gym's own classes (the real `nemo-gym` 0.7.0).

Runs in .venv-nemo-gym (Python 3.13, `scripts/test.sh --nemo-gym`, pins in constraints/nemo-gym.txt), hence
the `nemo_gym` marker: nemo-gym needs Python >= 3.13 and pins openai 2.44, so it cannot share .venv. The rows,
the server and the value checks are test_server_nemo_gym.py's; this file adds what only the real package can
say: that NeMo Gym's request, verify-response and aggregate classes accept sparring's answers with the token
ids intact, and that NeMo Gym's own `compute_aggregate_metrics` agrees with sparring's numbers.
"""

from __future__ import annotations

from typing import Any

import pytest
from nemo_gym.base_resources_server import BaseRunRequest, BaseVerifyResponse
from nemo_gym.config_types import AggregateMetrics, AggregateMetricsRequest
from nemo_gym.openai_utils import (
    NeMoGymResponseFunctionToolCallForTraining,
    TokenIDLogProbMixin,
)
from nemo_gym.reward_profile import compute_aggregate_metrics
from responses_api_agents.simple_agent.app import SimpleAgentRunRequest, SimpleAgentVerifyResponse
from test_server_nemo_gym import AGGREGATE_INPUT, ROW, STRING_ROW, aggregate, run_row

pytestmark = pytest.mark.nemo_gym

TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
# What NeMo Gym 0.7.0's aggregate has and sparring's has not: statistics across repeats, and per task the
# rollout bookkeeping of its reward profile. Asserted, so a change on either side shows up here.
ONLY_NEMO_GYM_AGENT = ("num_repeats", "_across_repeats/")
ONLY_NEMO_GYM_GROUP = {
    "num_rollouts",
    "expected_num_rollouts",
    "missing_num_rollouts",
    "reward_profile_completion_pct",
    "rollout_infos",
    "sample",
}


@pytest.mark.parametrize("row", [ROW, STRING_ROW], ids=["messages", "string-input"])
async def test_rows_and_run_answers_are_nemo_gyms_own_types_with_the_token_ids_intact(row: dict[str, Any]) -> None:
    BaseRunRequest.model_validate(row)
    SimpleAgentRunRequest.model_validate(row)
    response, _ = await run_row(row)
    assert response.status_code == 200, response.text
    answer = response.json()
    BaseVerifyResponse.model_validate(answer)
    verified = SimpleAgentVerifyResponse.model_validate(answer)
    assert verified.reward == answer["reward"] == 1.0
    assert verified.model_extra is not None and verified.model_extra["game_result"] == "win", "extra fields travel"
    sent = [item for item in answer["response"]["output"] if "generation_token_ids" in item]
    parsed = [item for item in verified.response.output if isinstance(item, TokenIDLogProbMixin)]
    assert len(sent) == len(parsed) == answer["sparring"]["num_policy_calls"] >= 2
    assert all(isinstance(item, NeMoGymResponseFunctionToolCallForTraining) for item in parsed)
    for item, raw in zip(parsed, sent, strict=True):
        assert [getattr(item, field) for field in TOKEN_FIELDS] == [raw[field] for field in TOKEN_FIELDS]
    assert verified.response.usage is not None
    assert verified.response.usage.output_tokens == sum(len(item.generation_token_ids) for item in parsed)


async def _run_answers() -> list[dict[str, Any]]:
    answers = []
    for rollout in (0, 1):
        response, _ = await run_row({**ROW, "_ng_rollout_index": rollout})
        answers.append(response.json())
    response, _ = await run_row({**STRING_ROW, "_ng_task_index": 8, "_ng_rollout_index": 0})
    return [*answers, response.json()]


@pytest.mark.parametrize("source", ["synthetic", "run-answers"])
async def test_aggregate_metrics_agree_with_nemo_gyms_own_computation(source: str) -> None:
    verify_responses = AGGREGATE_INPUT if source == "synthetic" else await _run_answers()
    AggregateMetricsRequest(verify_responses=verify_responses)
    reply = await aggregate(verify_responses)
    assert reply.status_code == 200, reply.text
    ours = AggregateMetrics.model_validate(reply.json())
    theirs = compute_aggregate_metrics(verify_responses)

    shared = set(ours.agent_metrics) & set(theirs.agent_metrics)
    # One difference, on sparring's side: the std of a field only one response has. NeMo Gym 0.7.0 leaves it out
    # of agent_metrics (it keeps 0.0 per task); sparring reports 0.0 in both places.
    assert set(ours.agent_metrics) - shared == {f"std/{field}" for field in _fields_seen_once(verify_responses)}
    assert {k: ours.agent_metrics[k] for k in shared} == pytest.approx({k: theirs.agent_metrics[k] for k in shared})
    assert all(k.startswith(ONLY_NEMO_GYM_AGENT) or "_across_repeats/" in k for k in set(theirs.agent_metrics) - shared)
    assert ours.key_metrics == pytest.approx({k: v for k, v in theirs.key_metrics.items() if k in ours.key_metrics})

    by_task = {g["_ng_task_index"]: g for g in theirs.group_level_metrics}
    assert sorted(g["_ng_task_index"] for g in ours.group_level_metrics) == sorted(by_task)
    for group in ours.group_level_metrics:
        their_group = by_task[group["_ng_task_index"]]
        assert group == pytest.approx({k: their_group[k] for k in group})
        assert set(their_group) - set(group) <= ONLY_NEMO_GYM_GROUP


def _fields_seen_once(verify_responses: list[dict[str, Any]]) -> set[str]:
    """Top-level numeric fields (not NeMo Gym's `_ng_` keys) that exactly one response has."""
    counts: dict[str, int] = {}
    for response in verify_responses:
        for key, value in response.items():
            if isinstance(value, (int, float)) and not key.startswith("_ng_"):
                counts[key] = counts.get(key, 0) + 1
    return {key for key, count in counts.items() if count == 1}
