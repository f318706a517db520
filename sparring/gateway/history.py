"""Message fingerprints: how the gateway tells whether a call continues a conversation it has seen.

Agents send their history back in their own dialect: LangChain re-serialises tool-call arguments
(`{"position":4}` comes back as `{"position": 4}`), SDKs add `refusal` or `annotations` fields, and
content may be a list of text parts. A fingerprint keeps what the model sees (role, text, tool names
and arguments as parsed JSON) and drops the rest, so an unchanged history compares equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

Fingerprint = tuple[str, str, tuple[tuple[str, str], ...]]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_OPENING_ROLES = frozenset({"system", "developer"})


def content_text(content: Any) -> str:
    """The text of an OpenAI message `content`: a string, None, or a list of parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def canonical_arguments(arguments: Any) -> str:
    """Tool-call arguments as sorted compact JSON when they parse, else the raw text as the model wrote it."""
    if not isinstance(arguments, str):
        return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()
    try:
        return orjson.dumps(orjson.loads(arguments), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONDecodeError:
        return arguments


def fingerprint(message: Mapping[str, Any]) -> Fingerprint:
    """What identifies a message in a history: role (developer counts as system), text, tool calls."""
    role = message.get("role") or ""
    calls = tuple(
        (str(function.get("name") or ""), canonical_arguments(function.get("arguments") or ""))
        for function in (call.get("function") or {} for call in message.get("tool_calls") or ())
    )
    return ("system" if role == "developer" else role, content_text(message.get("content")), calls)


def fingerprints(messages: Sequence[Mapping[str, Any]]) -> tuple[Fingerprint, ...]:
    """The fingerprints of a whole history, in order."""
    return tuple(fingerprint(m) for m in messages)


def opening(prints: Sequence[Fingerprint]) -> tuple[Fingerprint, ...]:
    """A conversation's identity: its leading system messages plus the first message after them."""
    end = 0
    while end < len(prints) and prints[end][0] in _OPENING_ROLES:
        end += 1
    return tuple(prints[: end + 1])


def message_errors(messages: Any) -> str | None:
    """Why `messages` is not a chat history (field and index named), or None."""
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty list of message objects"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}]: must be an object, got {type(message).__name__}"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{index}].role: must be one of {', '.join(sorted(ROLES))}, got {role!r}"
        calls = message.get("tool_calls")
        if calls is not None and (
            not isinstance(calls, list)
            or not all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls)
        ):
            return f"messages[{index}].tool_calls: must be a list of {{id, type, function: {{name, arguments}}}}"
    return None
