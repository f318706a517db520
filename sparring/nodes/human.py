"""A person's step in place of the user model: Studio pauses before `user`, a person sets `human_turn`, the run resumes.

The user node plays it through the same path as a sampled reply: it joins the user's role-flipped
history (marked `human`), its tool calls run in `user_tools`, its words pass the stop tokens and reach
the policy as the user's message. Nothing is sampled, so no user call or usage is counted.
"""

from __future__ import annotations

from typing import Any

import orjson
from langchain_core.messages import AIMessage

from sparring.core.messages import ToolCall, assistant_message

SHAPE = 'text, or {"content": "...", "tool_calls": [{"name": "...", "arguments": {...}}]}'


class HumanTurnError(ValueError):
    """A `human_turn` that cannot be played; the run stops before the user step so it can be corrected."""


def human_reply(turn: Any, call_id_prefix: str) -> tuple[AIMessage, str]:
    """The person's step as the user's assistant message, with tool-call ids unique in the episode, and its text."""
    if isinstance(turn, str):
        text, calls = turn, []
    elif isinstance(turn, dict) and turn and set(turn) <= {"content", "tool_calls"}:
        text, calls = turn.get("content") or "", turn.get("tool_calls") or []
        if not isinstance(text, str) or not isinstance(calls, list):
            raise HumanTurnError(f"human_turn: expected {SHAPE}, got {turn!r}")
    else:
        raise HumanTurnError(f"human_turn: expected {SHAPE}, got {turn!r}")
    tool_calls = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or set(call) - {"name", "arguments"}:
            raise HumanTurnError(
                f"human_turn.tool_calls[{k}]: expected {{'name': str, 'arguments': {{...}}}}, got {call!r}"
            )
        arguments = call.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise HumanTurnError(f"human_turn.tool_calls[{k}].arguments: expected an object, got {arguments!r}")
        tool_calls.append(
            ToolCall(id=f"{call_id_prefix}_{k}", name=call["name"], arguments=orjson.dumps(arguments).decode())
        )
    if not text.strip() and not tool_calls:
        raise HumanTurnError(
            "human_turn: empty; type what the user says, or resume without human_turn to let the model play"
        )
    reply = assistant_message(text, tool_calls, {"finish_reason": "human"})
    reply.additional_kwargs["human"] = True
    return reply, text
