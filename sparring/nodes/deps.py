"""What the nodes share across episodes: the environment, its tools per actor, and the model clients.

Most environments have one tool set per actor, built once here. An environment whose tools come
from the task (`episode_tools`, see envs/base.py) gets a tool set per distinct set of specs, cached.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sparring.envs.base import Actor, Environment, close_environment, episode_tools_hook
from sparring.models.pool import ClientPool
from sparring.models.tito import TailRenderer, load_tokenizer
from sparring.tools.specs import ToolSpec

MAX_CACHED_TOOLSETS = 1024


@dataclass(frozen=True, slots=True)
class Toolset:
    """An actor's tools in the forms the nodes need: by name, the name set, and the wire `tools` list."""

    specs: dict[str, ToolSpec]
    names: frozenset[str]
    wire: list[dict[str, Any]] | None
    key: str

    @classmethod
    def of(cls, specs: Iterable[ToolSpec]) -> Toolset:
        by_name = {t.name: t for t in specs}
        wire = [t.to_openai() for t in by_name.values()] or None
        return cls(by_name, frozenset(by_name), wire, orjson.dumps(wire).decode())


@dataclass
class EpisodeDeps:
    """Built once per graph; nothing episode-specific lives here."""

    env: Environment
    clients: ClientPool = field(default_factory=ClientPool)
    tool_specs: dict[str, dict[str, ToolSpec]] = field(init=False)
    tool_names: dict[str, frozenset[str]] = field(init=False)
    wire_tools: dict[str, list[dict[str, Any]] | None] = field(init=False)
    toolsets: dict[str, Toolset] = field(init=False)
    _episode_toolsets: dict[str, Toolset] = field(init=False, default_factory=dict)
    _renderers: dict[tuple[str, str], TailRenderer] = field(init=False, default_factory=dict)
    _loading: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        actors: tuple[Actor, ...] = ("policy", "user")
        self.toolsets = {a: Toolset.of(self.env.tools(a)) for a in actors}
        self.tool_specs = {a: self.toolsets[a].specs for a in actors}
        self.tool_names = {a: self.toolsets[a].names for a in actors}
        self.wire_tools = {a: self.toolsets[a].wire for a in actors}

    def tools_for(self, actor: Actor, env_state: Any) -> Toolset:
        """The actor's tools in this episode: the environment's own, or the task's when it has `episode_tools`."""
        hook = episode_tools_hook(self.env)
        if hook is None:
            return self.toolsets[actor]
        toolset = Toolset.of(hook(env_state, actor))
        cached = self._episode_toolsets.get(toolset.key)
        if cached is not None:
            return cached
        if len(self._episode_toolsets) >= MAX_CACHED_TOOLSETS:
            self._episode_toolsets.clear()
        self._episode_toolsets[toolset.key] = toolset
        return toolset

    async def aclose(self) -> None:
        """Close the model clients and whatever the environment pools."""
        await self.clients.aclose()
        await close_environment(self.env)

    async def renderer(self, tokenizer: str, toolset: Toolset | None = None) -> TailRenderer:
        """The policy's prompt renderer for token-in-token-out mode, loaded once per tokenizer and tool set.

        The first load reads the tokenizer's files in a worker thread, never on the event loop: a batch
        would stall on it, and `langgraph dev` (Studio) refuses blocking calls there.
        """
        toolset = toolset or self.toolsets["policy"]
        renderer = self._renderers.get((tokenizer, toolset.key))
        if renderer is None:
            renderer = await asyncio.to_thread(self._load_renderer, tokenizer, toolset)
        return renderer

    def _load_renderer(self, tokenizer: str, toolset: Toolset) -> TailRenderer:
        with self._loading:  # episodes starting together load it once
            renderer = self._renderers.get((tokenizer, toolset.key))
            if renderer is None:
                renderer = TailRenderer(load_tokenizer(tokenizer), toolset.wire)
                self._renderers[(tokenizer, toolset.key)] = renderer
            return renderer
