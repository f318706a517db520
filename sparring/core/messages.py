"""LangChain messages (what graph state and Studio show) to and from the OpenAI wire format.

Assistant tool calls keep the raw OpenAI form in `additional_kwargs["tool_calls"]`: the arguments
exactly as the model wrote them (malformed ones included), in order. That raw form is what goes back
on the wire and what the tool node executes; `tool_calls` / `invalid_tool_calls` are the parsed views
LangChain and Studio display.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage


@dataclass(slots=True)
class ToolCall:
    """A call as the model wrote it: `arguments` is the raw JSON text, parsed later so errors can be reported."""

    id: str
    name: str
    arguments: str


_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def to_wire(message: BaseMessage) -> dict[str, Any]:
    """One message in chat-completions form."""
    role = _ROLE_OF_TYPE[message.type]
    wire: dict[str, Any] = {"role": role, "content": message.content}
    if role == "assistant":
        calls = message.additional_kwargs.get("tool_calls")
        if calls:
            wire["tool_calls"] = calls
            wire["content"] = message.content or None
    elif isinstance(message, ToolMessage):  # the one message class of type "tool"
        wire["tool_call_id"] = message.tool_call_id
        if message.name:
            wire["name"] = message.name
    return wire


def to_wire_list(messages: Iterable[BaseMessage]) -> list[dict[str, Any]]:
    """A whole history in chat-completions form."""
    return [to_wire(m) for m in messages]


def from_wire(wire: dict[str, Any]) -> BaseMessage:
    """A task's opening message (OpenAI form) as a LangChain message."""
    role, content = wire.get("role"), wire.get("content") or ""
    if role in ("system", "developer"):
        return SystemMessage(content=content)
    if role == "user":
        return HumanMessage(content=content)
    if role == "assistant":
        return assistant_message(
            content,
            [
                ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments", ""))
                for c in wire.get("tool_calls") or ()
            ],
        )
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=wire.get("tool_call_id", ""), name=wire.get("name"))
    raise ValueError(f"unknown message role {role!r}")


def assistant_message(text: str, calls: list[ToolCall], response_metadata: dict[str, Any] | None = None) -> AIMessage:
    """An assistant reply with its tool calls kept raw (for the wire) and parsed (for display)."""
    if not calls:
        return AIMessage(content=text, response_metadata=response_metadata or {})
    raw, parsed, invalid = [], [], []
    for call in calls:
        raw.append({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}})
        try:
            args = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            args = None
        if isinstance(args, dict):
            parsed.append({"name": call.name, "args": args, "id": call.id, "type": "tool_call"})
        else:
            invalid.append(
                {
                    "name": call.name,
                    "args": call.arguments,
                    "id": call.id,
                    "error": "arguments are not a JSON object",
                    "type": "invalid_tool_call",
                }
            )
    return AIMessage(
        content=text,
        tool_calls=parsed,
        invalid_tool_calls=invalid,
        additional_kwargs={"tool_calls": raw},
        response_metadata=response_metadata or {},
    )


def raw_tool_calls(message: BaseMessage) -> list[dict[str, Any]]:
    """The assistant message's tool calls in wire form, in the order the model wrote them."""
    if not isinstance(message, AIMessage):
        return []
    return message.additional_kwargs.get("tool_calls") or []
