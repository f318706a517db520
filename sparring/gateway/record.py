"""A gateway session as a rollout record: the shape of `sparring.core.record.build_record`.

So `sparring export` and every consumer of our records read gateway sessions like episodes. What
differs: `messages` is the first branch's conversation as the agent last sent it plus the reply it
got; `trajectory.segments` holds every branch's segments, branch after branch; `trajectory.calls`
says per answered choice which call, choice, branch and segment it is; `trajectory.branches` lists
each branch with its parent, segments, prefix mismatches and conversation. No simulated user here:
`user_messages` is empty and `num_user_calls` 0; the agent's own tool time is not seen (`tool_s` 0).
"""

from __future__ import annotations

import time
from typing import Any

from sparring.core.ledger import Segment
from sparring.gateway.session import Session

_ACTOR_OF_ROLE = {"assistant": "policy", "user": "user", "tool": "env", "system": "env", "developer": "env"}
_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name")


def record_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message in wire form (the fields a trainer reads) plus who produced it."""
    record = {key: message[key] for key in _FIELDS if message.get(key) is not None}
    record.setdefault("content", None)
    record["actor"] = _ACTOR_OF_ROLE.get(message.get("role") or "", "env")
    return record


def session_record(
    session: Session,
    *,
    status: str,
    stop_reason: str,
    reward: float | None,
    reward_components: dict[str, float],
    env_result: dict[str, Any],
    env: str,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    """The record of an ended session."""
    segments: list[Segment] = []
    calls: list[dict[str, Any]] = []
    branches: list[dict[str, Any]] = []
    mismatches = 0
    for branch in session.branches.items:
        ledger = branch.ledger()
        offset = len(segments)
        segments += ledger["segments"]
        for span, call in zip(ledger["calls"], branch.calls, strict=True):
            calls.append({**span, "segment": span["segment"] + offset, "branch": branch.index, **call})
        mismatches += ledger["prefix_mismatches"]
        branches.append(
            {
                "index": branch.index,
                "parent": branch.parent,
                "segments": list(range(offset, len(segments))),
                "prefix_mismatches": ledger["prefix_mismatches"],
                "num_calls": len(branch.calls),
                "messages": [record_message(m) for m in branch.messages],
            }
        )
    calls.sort(key=lambda c: (c["call"], c["choice"]))
    messages = branches[0]["messages"] if branches else []
    return {
        "id": session.id,
        "task_index": session.task_index,
        "repeat_index": session.repeat_index,
        "task_id": session.task.get("id"),
        "env": env,
        "status": status,
        "stop_reason": stop_reason,
        "reward": reward,
        "reward_components": reward_components,
        "env_result": env_result,
        "num_turns": sum(1 for m in messages if m["role"] == "user"),
        "num_policy_calls": session.num_calls,
        "num_user_calls": 0,
        "messages": messages,
        "user_messages": [],
        "trajectory": {"segments": segments, "prefix_mismatches": mismatches, "calls": calls, "branches": branches},
        "usage": {
            "policy": {"prompt_tokens": session.prompt_tokens, "completion_tokens": session.completion_tokens},
            "user": {"prompt_tokens": 0, "completion_tokens": 0},
        },
        "timing": {
            "wall_s": round(time.time() - session.created_at, 6),
            "model_s": round(session.model_s, 6),
            "tool_s": 0.0,
        },
        "error": error,
        "metadata": session.metadata,
        "unrecorded_calls": session.unrecorded,
    }
