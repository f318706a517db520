"""Tool specifications and the calls made against them.

A tool is declared once (name, description, JSON-schema parameters) and sent to models in the
OpenAI function format; `strict` asks servers that honour it (vLLM) to constrain the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Fault = Literal["caller", "tool"]


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

    `is_error` marks a tool error: an observation the actor sees, never a failure of the episode.
    `fault` says whose error it is, so attribution never blames the policy for a broken tool:
    "caller" (the default for an error: bad arguments, an illegal move, an unknown id) or "tool" (the
    tool failed on its own: an internal error or an unreachable backend it reports as a result).
    """

    content: str
    state: Any
    is_error: bool = False
    fault: Fault | None = None

    def __post_init__(self) -> None:
        if self.fault is not None and not self.is_error:
            raise ValueError(
                f"ToolResult.fault {self.fault!r} needs is_error=True (a result that succeeded has no fault)"
            )
        if self.fault not in (None, "caller", "tool"):
            raise ValueError(f"ToolResult.fault must be 'caller', 'tool' or None, got {self.fault!r}")


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
