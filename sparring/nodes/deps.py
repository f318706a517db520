"""What the nodes share across episodes: the environment, its tools per actor, and the model clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparring.envs.base import Actor, Environment
from sparring.models.pool import ClientPool
from sparring.models.tito import TailRenderer, load_tokenizer
from sparring.tools.specs import ToolSpec


@dataclass
class EpisodeDeps:
    """Built once per graph; nothing episode-specific lives here."""

    env: Environment
    clients: ClientPool = field(default_factory=ClientPool)
    tool_specs: dict[str, dict[str, ToolSpec]] = field(init=False)
    tool_names: dict[str, frozenset[str]] = field(init=False)
    wire_tools: dict[str, list[dict[str, Any]] | None] = field(init=False)
    _renderers: dict[str, TailRenderer] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        actors: tuple[Actor, ...] = ("policy", "user")
        self.tool_specs = {a: {t.name: t for t in self.env.tools(a)} for a in actors}
        self.tool_names = {a: frozenset(self.tool_specs[a]) for a in actors}
        self.wire_tools = {a: [t.to_openai() for t in self.tool_specs[a].values()] or None for a in actors}

    def renderer(self, tokenizer: str) -> TailRenderer:
        """The policy's prompt renderer for token-in-token-out mode, loaded once per tokenizer."""
        renderer = self._renderers.get(tokenizer)
        if renderer is None:
            renderer = self._renderers[tokenizer] = TailRenderer(load_tokenizer(tokenizer), self.wire_tools["policy"])
        return renderer
