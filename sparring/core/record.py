"""The rollout record: one JSON object per episode (one line of JSONL), built from the final state."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import BaseMessage

from sparring.core.attribution import DEFAULT_STOP_TOKENS, attribute
from sparring.core.ledger import materialize
from sparring.core.messages import to_wire
from sparring.core.versions import episode_versions

_ACTOR_OF_TYPE = {"ai": "policy", "human": "user", "tool": "env", "system": "env"}


def view_record(message: BaseMessage) -> dict[str, Any]:
    """A message of either view in wire form; a tool message also keeps its `status` ("success" or
    "error") and, on an error, its `fault` ("caller" or "tool"): who a failed call is to blame on."""
    record = to_wire(message)
    if message.type == "tool":
        status = getattr(message, "status", "success")
        record["status"] = status
        if status == "error":
            record["fault"] = message.additional_kwargs.get("fault") or "caller"
    return record


def message_record(message: BaseMessage) -> dict[str, Any]:
    """A message of the policy's view in wire form (see `view_record`) plus who produced it."""
    record = view_record(message)
    record["actor"] = message.additional_kwargs.get("actor") or _ACTOR_OF_TYPE[message.type]
    return record


def build_record(
    state: dict[str, Any], *, env: str, episode_id: str, task_index: int | None = None, repeat_index: int = 0
) -> dict[str, Any]:
    """The record design.md specifies, from an episode's final state.

    `attribution` is the verify node's verdict; a state that never reached verify (an episode aborted
    outside the graph: a crash, a lost worker, a shutdown) gets the rule checks' verdict here.

    `weight_versions` sums up the versions of the policy's tokens (core/versions.py): None when no call
    reported any.
    """
    ledger = materialize(state.get("ledger") or ())
    record = {
        "id": episode_id,
        "task_index": task_index,
        "repeat_index": repeat_index,
        "task_id": (state.get("task") or {}).get("id"),
        "env": env,
        "status": state.get("status"),
        "stop_reason": state.get("stop_reason"),
        "reward": state.get("reward"),
        "reward_components": state.get("reward_components") or {},
        "env_result": state.get("env_result") or {},
        "num_turns": state.get("turn", 0),
        "num_policy_calls": state.get("num_policy_calls", 0),
        "num_user_calls": state.get("num_user_calls", 0),
        "messages": [message_record(m) for m in state.get("messages") or ()],
        "user_messages": [view_record(m) for m in state.get("user_messages") or ()],
        "trajectory": {
            "segments": ledger["segments"],
            "prefix_mismatches": ledger["prefix_mismatches"],
            "calls": ledger["calls"],
        },
        "weight_versions": episode_versions(
            (c["weight_versions"] for c in ledger["calls"]), state.get("weight_version")
        ),
        "usage": {
            role: (state.get("usage") or {}).get(role, {"prompt_tokens": 0, "completion_tokens": 0})
            for role in ("policy", "user")
        },
        "timing": {
            "wall_s": round(state.get("wall_s", 0.0), 6),
            "model_s": round(state.get("model_s", 0.0), 6),
            "tool_s": round(state.get("tool_s", 0.0), 6),
        },
        "error": state.get("error"),
    }
    stop_tokens = (state.get("limits") or {}).get("user_stop_tokens", DEFAULT_STOP_TOKENS)
    record["attribution"] = state.get("attribution") or attribute(record, stop_tokens=stop_tokens)
    return record


def aborted_record(
    task: dict[str, Any],
    *,
    env: str,
    episode_id: str,
    stop_reason: str,
    error: BaseException | tuple[str, str],
    task_index: int | None = None,
    repeat_index: int = 0,
    started: float | None = None,
) -> dict[str, Any]:
    """The record of an episode that could not run or finish: a crash, a stop, a lost worker, a shutdown.

    `error` is the exception, or its (type, message) when it happened elsewhere (a Ray worker);
    `started` the episode's start (`time.time()`), if it started.
    """
    error_type, message = (type(error).__name__, str(error)) if isinstance(error, BaseException) else error
    state = {
        "task": task,
        "status": "aborted",
        "stop_reason": stop_reason,
        "wall_s": 0.0 if started is None else time.time() - started,
        "error": {"type": error_type, "message": message},
    }
    return build_record(state, env=env, episode_id=episode_id, task_index=task_index, repeat_index=repeat_index)
