"""Constrained decoding of tool calls in token-in-token-out mode (vLLM structured outputs).

`/v1/completions` has no `tools` or `tool_choice`, so vLLM cannot constrain a call's arguments the
way chat mode does for `strict` tools. Instead the request carries a structural tag (vLLM 0.32's
`structured_outputs.structural_tag`, compiled by xgrammar) in the Hermes/Qwen shape the parser
reads back, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`:
- tool choice `required` (or a named tool): the whole reply is exactly one such call whose name
  and arguments fit a tool's schema;
- `auto`: the model may write text, and once it opens `<tool_call>` the call must fit a schema.
Only strict tools are constrained, as in chat mode; with any non-strict tool nothing is.

The ids and logprobs still come from the server, so the ledger stays exact; vLLM reports the
model's own logprob of each sampled token (before the constraint's mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

TOOL_CALL_BEGIN = "<tool_call>\n"
TOOL_CALL_END = "\n</tool_call>"


def tool_call_constraint(tools: Sequence[dict[str, Any]] | None, tool_choice: Any) -> dict[str, Any] | None:
    """vLLM's `structured_outputs` for these OpenAI-format tools and tool choice, or None (unconstrained)."""
    if not tools or tool_choice == "none" or not all(t["function"].get("strict") for t in tools):
        return None
    if isinstance(tool_choice, dict):
        wanted = tool_choice.get("function", {}).get("name")
        tools = [t for t in tools if t["function"]["name"] == wanted]
        if not tools:
            return None
    call = {"anyOf": [_call_schema(t["function"]) for t in tools]}
    if tool_choice == "auto":
        tag = {
            "type": "triggered_tags",
            "triggers": ["<tool_call>"],
            "tags": [
                {
                    "begin": TOOL_CALL_BEGIN,
                    "content": {"type": "json_schema", "json_schema": call},
                    "end": TOOL_CALL_END,
                }
            ],
        }
    else:
        tag = {
            "type": "sequence",
            "elements": [
                {"type": "const_string", "value": TOOL_CALL_BEGIN},
                {"type": "json_schema", "json_schema": call},
                {"type": "const_string", "value": TOOL_CALL_END},
            ],
        }
    return {"structural_tag": orjson.dumps({"type": "structural_tag", "format": tag}).decode()}


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    """One call of this function: its name, and arguments that fit its parameters."""
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": function["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


_CACHE: dict[tuple[str, str], dict[str, Any] | None] = {}
_CACHE_SIZE = 1024


def cached_tool_call_constraint(
    tools_key: str, tools: Sequence[dict[str, Any]] | None, tool_choice: str
) -> dict[str, Any] | None:
    """`tool_call_constraint`, built once per tool set (`tools_key`, e.g. its JSON) and tool choice: calls are hot."""
    key = (tools_key, tool_choice)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = tool_call_constraint(tools, tool_choice)
    return _CACHE[key]


def may_continue(structured_outputs: dict[str, Any] | None, partial_text: str) -> bool:
    """Whether an aborted reply under this constraint may go on from its partial text in a new request.

    vLLM compiles the grammar afresh for every request, from the start: a continuation is only bound
    by the same rule if the partial left the grammar where it begins. That holds with no constraint,
    and with `auto`'s triggered tags while the partial has not begun a trigger (free text so far); a
    `required` call, or an `auto` reply inside `<tool_call>`, must be made again from its prompt.
    """
    if structured_outputs is None:
        return True
    try:
        tag = orjson.loads(structured_outputs["structural_tag"])["format"]
        triggers = tag["triggers"] if tag["type"] == "triggered_tags" else None
    except (KeyError, TypeError, orjson.JSONDecodeError):
        return False
    if not triggers:
        return False
    return not any(
        trigger in partial_text or any(partial_text.endswith(trigger[:n]) for n in range(1, len(trigger)))
        for trigger in triggers
    )
