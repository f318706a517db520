"""Tool specifications and the calls made against them.

A tool is declared once (name, description, JSON-schema parameters) and sent to models in the
OpenAI function format; `strict` asks servers that honour it (vLLM) to constrain the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
