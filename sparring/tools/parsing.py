"""Tool calls written in generated text, as small models write them.

Token-in-token-out mode reads the model's raw text, so sparring finds the calls itself: Hermes/Qwen
`<tool_call>{...}</tool_call>` blocks, or, when there are none, a bare JSON call
(`{"name": ..., "arguments": {...}}`, possibly in a ```json fence), which Qwen 0.5B often writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from sparring.core.messages import ToolCall

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


@dataclass(slots=True)
class ParsedReply:
    """The visible text and the calls found in one generated reply."""

    text: str
    tool_calls: list[ToolCall]


def parse_reply(text: str, tool_names: frozenset[str], call_id_prefix: str) -> ParsedReply:
    """Split generated text into visible text and tool calls; unparseable call JSON is kept raw (a tool error later)."""
    blocks = list(_TAGGED.finditer(text))
    if blocks:
        calls = [_call(m.group(1), f"{call_id_prefix}_{i}") for i, m in enumerate(blocks)]
        visible = _TAGGED.sub("", text).strip()
        return ParsedReply(visible, calls)
    bare = _bare_call(text, tool_names)
    if bare is not None:
        span, payload = bare
        visible = (text[: span[0]] + text[span[1] :]).strip()
        return ParsedReply(visible, [_call(payload, f"{call_id_prefix}_0")])
    return ParsedReply(text.strip(), [])


def adopt_text_calls(
    text: str, calls: list[ToolCall], tool_names: frozenset[str], call_id_prefix: str
) -> tuple[str, list[ToolCall]]:
    """Calls the server parsed win; without any, calls the model wrote in its text are taken out of it.

    vLLM's hermes parser misses the bare JSON calls small models write, which would otherwise turn a
    move into plain chat.
    """
    if calls or not tool_names:
        return text, calls
    parsed = parse_reply(text, tool_names, call_id_prefix)
    return (parsed.text, parsed.tool_calls) if parsed.tool_calls else (text, calls)


def _call(payload: str, call_id: str) -> ToolCall:
    """One call from its JSON; arguments stay raw text so validation reports exactly what was wrong."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        name = re.search(r'"name"\s*:\s*"([^"]+)"', payload)
        return ToolCall(id=call_id, name=name.group(1) if name else "", arguments=payload)
    if not isinstance(data, dict):
        return ToolCall(id=call_id, name="", arguments=payload)
    arguments = data.get("arguments", data.get("parameters", {}))
    raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return ToolCall(id=call_id, name=str(data.get("name", "")), arguments=raw)


def _bare_call(text: str, tool_names: frozenset[str]) -> tuple[tuple[int, int], str] | None:
    """A JSON object naming one of our tools, fenced or the whole reply; None when the text is just text."""
    candidates = [(m.span(), m.group(1)) for m in _FENCED.finditer(text)]
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        start = text.index("{")
        candidates.append(((start, start + len(stripped)), stripped))
    for span, payload in candidates:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("name") in tool_names:
            return span, payload
    return None
