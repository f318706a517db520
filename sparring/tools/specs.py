"""Tool specifications and the calls made against them.

A tool is declared once (name, description, JSON-schema parameters) and sent to models in the
OpenAI function format; `strict` asks servers that honour it (vLLM) to constrain the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One function a model may call."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = True

    def to_openai(self) -> dict[str, Any]:
        """The chat-completions `tools` entry."""
        function: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


@dataclass(slots=True)
class ToolResult:
    """What one tool call returned to the actor, and the environment state after it.

    `is_error` marks a tool error (bad arguments, illegal move): an observation, never a failure.
    """

    content: str
    state: Any
    is_error: bool = False


class StateToolSpecs:
    """ToolSpecs for tool lists an environment keeps in its episodes' (JSON) states, built once per list.

    Each tool is `{"name", "description", "parameters"[, "strict"]}`. The same list object across an
    episode's calls costs an identity check; equal lists of other episodes share one tuple, so the nodes
    (which cache a tool set's wire form by that object) build it once.
    """

    def __init__(self, max_sets: int = 1024) -> None:
        self.max_sets = max_sets
        self._by_content: dict[bytes, tuple[ToolSpec, ...]] = {}
        self._by_object: dict[int, tuple[list[dict[str, Any]], tuple[ToolSpec, ...]]] = {}

    def of(self, tools: list[dict[str, Any]]) -> tuple[ToolSpec, ...]:
        """The specs of `tools`."""
        seen = self._by_object.get(id(tools))
        if seen is not None and seen[0] is tools:
            return seen[1]
        key = orjson.dumps(tools)
        specs = self._by_content.get(key)
        if specs is None:
            if len(self._by_content) >= self.max_sets:
                self._by_content.clear()
            specs = self._by_content[key] = tuple(_state_spec(tool) for tool in tools)
        if len(self._by_object) >= self.max_sets:
            self._by_object.clear()
        self._by_object[id(tools)] = (tools, specs)  # keeps the list alive, so its id stays its own
        return specs


def _state_spec(tool: dict[str, Any]) -> ToolSpec:
    return ToolSpec(
        name=tool["name"],
        description=tool.get("description") or "",
        parameters=tool.get("parameters") or {"type": "object", "properties": {}},
        strict=bool(tool.get("strict", False)),
    )
