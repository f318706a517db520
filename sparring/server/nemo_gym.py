"""NeMo Gym agent-server compatibility: a row in, the verify-response shape out, and /aggregate_metrics.

Shapes follow NeMo Gym's own definitions (NVIDIA-NeMo/Gym, branch `cwing/multi-turn-agent`, commit
a2ea5c5c43daffb6d00ae6a33d2061c1e3a8f213): `BaseRunRequest` / `BaseVerifyResponse`
(nemo_gym/base_resources_server.py), `NeMoGymResponse` and the `...ForTraining` output items with
`prompt_token_ids`, `generation_token_ids`, `generation_log_probs` (nemo_gym/openai_utils.py), how
the vLLM model server attaches them to the last item of each model call
(responses_api_models/vllm_model/app.py), the multi-turn agent's `/run`
(responses_api_agents/multi_turn_agent/app.py), and `compute_aggregate_metrics`
(nemo_gym/reward_profile.py). The answer keeps every field of the row (verifier_metadata, agent_ref,
_ng_task_index, ...), adds `response` and `reward`, and flattens the environment's result
(`game_result`, ...) beside them, as NeMo Gym's verify responses do.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from typing import Any

from sparring.core.task import parse_task
from sparring.tools.specs import ToolSpec

TASK_INDEX_KEY = "_ng_task_index"
ROLLOUT_INDEX_KEY = "_ng_rollout_index"
# Row fields sparring reads itself; everything else in the row reaches the environment as task metadata.
SPARRING_ROW_FIELDS = ("env", "user_model_system_prompt")
_RESERVED = frozenset({"responses_create_params", "response", "reward", "sparring", "reward_components"})


def row_to_task(row: dict[str, Any], where: str = "row") -> dict[str, Any]:
    """sparring's task from a NeMo Gym row; TaskError names the field."""
    task = parse_task({k: v for k, v in row.items() if k not in SPARRING_ROW_FIELDS}, where)
    if row.get("user_model_system_prompt"):
        task["user_persona"] = row["user_model_system_prompt"]
    return task


def sampling_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The policy's sampling from `responses_create_params` (temperature, top_p, max_output_tokens)."""
    overrides: dict[str, Any] = {}
    for gym_name, ours in (
        ("temperature", "policy_temperature"),
        ("top_p", "policy_top_p"),
        ("max_output_tokens", "policy_max_tokens"),
    ):
        if params.get(gym_name) is not None:
            overrides[ours] = params[gym_name]
    return overrides


def responses_tool(spec: ToolSpec) -> dict[str, Any]:
    """A tool in the Responses API's flat `FunctionToolParam` form."""
    return {
        "type": "function",
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.parameters,
        "strict": bool(spec.strict),
    }


def verify_response(
    row: dict[str, Any],
    params: dict[str, Any],
    record: dict[str, Any],
    *,
    model: str,
    tools: list[dict[str, Any]],
    num_input_messages: int,
) -> dict[str, Any]:
    """The `/run` answer for a finished (not aborted) episode: the row, `response`, `reward`, env fields."""
    policy_usage = record["usage"]["policy"]
    truncated_by_length = record["stop_reason"] in ("context_length", "max_output_tokens")
    response = {
        "id": f"resp_{record['id']}",
        "object": "response",
        "created_at": float(int(time.time())),
        "model": model,
        "status": "incomplete" if truncated_by_length else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if truncated_by_length else None,
        "error": None,
        "instructions": None,
        "metadata": {},
        "output": output_items(record, num_input_messages),
        "parallel_tool_calls": params.get("parallel_tool_calls", True),
        "tool_choice": params.get("tool_choice", "auto"),
        "tools": tools,
        "temperature": params.get("temperature"),
        "top_p": params.get("top_p"),
        "max_output_tokens": params.get("max_output_tokens"),
        "usage": {
            "input_tokens": policy_usage["prompt_tokens"],
            # NeMo Gym pins openai<=2.7.2 (cached_tokens only); newer SDKs also require cache_write_tokens.
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": policy_usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": policy_usage["prompt_tokens"] + policy_usage["completion_tokens"],
        },
    }
    answer = {k: v for k, v in row.items() if k not in SPARRING_ROW_FIELDS}
    answer["responses_create_params"] = params | {"tools": tools}
    answer["response"] = response
    answer["reward"] = float(record["reward"]) if record["reward"] is not None else 0.0
    answer["reward_components"] = record["reward_components"]
    for key, value in record["env_result"].items():
        if key not in _RESERVED and key not in answer:
            answer[key] = value
    answer["sparring"] = {
        "id": record["id"],
        "env": record["env"],
        "status": record["status"],
        "stop_reason": record["stop_reason"],
        "num_turns": record["num_turns"],
        "num_policy_calls": record["num_policy_calls"],
        "num_user_calls": record["num_user_calls"],
        "prefix_mismatches": record["trajectory"]["prefix_mismatches"],
    }
    return answer


def output_items(record: dict[str, Any], num_input_messages: int) -> list[dict[str, Any]]:
    """The episode after its opening as Responses output items; each policy call's last item carries its ids.

    A policy call yields an assistant `message` (when it wrote text, or wrote nothing at all) and one
    `function_call` per tool call, like NeMo Gym's vLLM model server; the call's prompt ids, generated
    ids and their logprobs go on the last of those items. Tool results become `function_call_output`,
    the user's words and the environment's observations `user` messages. The ids are sliced from the
    ledger, never re-tokenised; if the policy messages and the ledger's calls do not pair up one to
    one, no ids are attached rather than misattributed ones.
    """
    messages = record["messages"][num_input_messages:]
    num_policy_messages = sum(1 for m in messages if m["role"] == "assistant" and m.get("actor") == "policy")
    paired = len(record["trajectory"]["calls"]) == num_policy_messages
    token_info = iter(_call_tokens(record["trajectory"]) if paired else ())
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant" and message.get("actor") == "policy":
            items.extend(_assistant_items(message, record["id"], index, next(token_info, None)))
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id") or "",
                    "output": message.get("content") or "",
                }
            )
        elif role in ("user", "assistant"):
            items.append({"type": "message", "role": role, "content": message.get("content") or ""})
    return items


def _assistant_items(
    message: dict[str, Any], episode_id: str, index: int, tokens: dict[str, list[Any]] | None
) -> list[dict[str, Any]]:
    tool_calls = message.get("tool_calls") or []
    content = message.get("content") or ""
    items: list[dict[str, Any]] = []
    if content or not tool_calls:
        items.append(
            {
                "id": f"msg_{episode_id}_{index}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }
        )
    for call in tool_calls:
        items.append(
            {
                "id": call["id"],
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    if tokens is not None:
        items[-1].update(tokens)
    return items


def _call_tokens(trajectory: dict[str, Any]) -> list[dict[str, list[Any]]]:
    """Per policy call: its exact prompt ids, generated ids and their logprobs, sliced from the ledger."""
    out = []
    for call in trajectory["calls"]:
        segment = trajectory["segments"][call["segment"]]
        start, end = call["prompt_len"], call["prompt_len"] + call["completion_len"]
        out.append(
            {
                "prompt_token_ids": segment["token_ids"][:start],
                "generation_token_ids": segment["token_ids"][start:end],
                "generation_log_probs": [float(x) for x in segment["logprobs"][start:end]],
            }
        )
    return out


class MetricsError(ValueError):
    """Verify responses whose metrics cannot be computed; `loc` and the message name the field."""

    def __init__(self, loc: list[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def aggregate_metrics(verify_responses: list[dict[str, Any]]) -> dict[str, Any]:
    """NeMo Gym's aggregate metrics: `mean/…`, `max/…`, `min/…`, `median/…`, `std/…` of every numeric field.

    Numeric fields are the top-level numbers and booleans of each verify response plus its
    `response.usage` token counts; per task (grouped by `_ng_task_index`) and overall; key metrics are
    the overall means. MetricsError for a task index that is not an integer, or a statistic too large
    for a 64-bit float (the spread of values near 1e308).
    """
    if not verify_responses:
        return {"group_level_metrics": [], "agent_metrics": {}, "key_metrics": {}}
    by_task: dict[int, list[dict[str, float]]] = defaultdict(list)
    everything: list[dict[str, float]] = []
    for index, entry in enumerate(verify_responses):
        numbers = _numeric_fields(entry)
        by_task[_task_index(entry, index)].append(numbers)
        everything.append(numbers)
    group_level = [_describe(rows) | {TASK_INDEX_KEY: task} for task, rows in sorted(by_task.items())]
    agent = _describe(everything)
    return {
        "group_level_metrics": group_level,
        "agent_metrics": agent,
        "key_metrics": {k: v for k, v in agent.items() if k.startswith("mean/")},
    }


def _task_index(entry: dict[str, Any], index: int) -> int:
    value = entry.get(TASK_INDEX_KEY) or 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetricsError([index, TASK_INDEX_KEY], f"must be an integer, got {value!r}")
    return value


def _numeric_fields(entry: dict[str, Any]) -> dict[str, float]:
    response = entry.get("response")
    usage = (response.get("usage") if isinstance(response, dict) else None) or {}
    numbers: dict[str, float] = {}
    for key, value in (entry | usage).items():
        if key in (TASK_INDEX_KEY, ROLLOUT_INDEX_KEY):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):  # bool is an int: True counts 1
            numbers[key] = float(value)
    return numbers


def _describe(rows: list[dict[str, float]]) -> dict[str, float]:
    columns: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            columns[key].append(value)
    stats: dict[str, float] = {}
    for key, values in columns.items():
        stats[f"mean/{key}"] = _mean(values)
        stats[f"max/{key}"] = max(values)
        stats[f"min/{key}"] = min(values)
        stats[f"median/{key}"] = _median(values)
        stats[f"std/{key}"] = _std(key, values)
    return stats


def _mean(values: list[float]) -> float:
    """The mean, also of values whose sum overflows (it lies between their min and max, so it fits)."""
    try:
        return statistics.fmean(values)
    except OverflowError:
        scale = max(abs(v) for v in values)
        return scale * statistics.fmean(v / scale for v in values)


def _median(values: list[float]) -> float:
    """The median; two middle values near the float limit are averaged without overflowing."""
    middle = statistics.median(values)
    if math.isfinite(middle):
        return middle
    ordered = sorted(values)
    low, high = ordered[len(ordered) // 2 - 1], ordered[len(ordered) // 2]
    return low / 2 + high / 2


def _std(key: str, values: list[float]) -> float:
    """The sample standard deviation; MetricsError when it is beyond the largest float."""
    if len(values) < 2:
        return 0.0
    try:
        return statistics.stdev(values)
    except OverflowError:
        raise MetricsError([], f"std/{key}: the spread of {key!r} is beyond the largest 64-bit float") from None
