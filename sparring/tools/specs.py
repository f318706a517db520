"""Tool specifications and the calls made against them.

A tool is declared once (name, description, JSON-schema parameters) and sent to models in the
OpenAI function format; `strict` asks servers that honour it (vLLM) to constrain the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
