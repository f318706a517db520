"""What the nodes share across episodes: the environment, its tools per actor, and the model clients.

Most environments have one tool set per actor, built once here. An environment whose tools vary per
episode (`episode_tools`, see envs/base.py) gets a tool set per tool sequence it returns, cached by
that object: building the wire form (and its key) happens once per distinct sequence, not per call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sparring.envs.base import Actor, Environment
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
    toolsets: dict[str, Toolset] = field(init=False)
    _tools_vary: bool = field(init=False)
    # id of a sequence `episode_tools` returned -> (that sequence, kept alive so the id stays its own; its tool set)
    _episode_toolsets: dict[int, tuple[Sequence[ToolSpec], Toolset]] = field(init=False, default_factory=dict)
    _renderers: dict[tuple[str, str], TailRenderer] = field(init=False, default_factory=dict)
    _loading: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.toolsets = {a: Toolset.of(self.env.tools(a)) for a in ("policy", "user")}
        self._tools_vary = self.env.tools_vary()

    def tools_for(self, actor: Actor, env_state: Any) -> Toolset:
        """The actor's tools in this episode, now: the environment's fixed ones, or its `episode_tools`."""
        if not self._tools_vary:
            return self.toolsets[actor]
        specs = self.env.episode_tools(env_state, actor)
        cached = self._episode_toolsets.get(id(specs))
        if cached is not None and cached[0] is specs:
            return cached[1]
        if len(self._episode_toolsets) >= MAX_CACHED_TOOLSETS:
            self._episode_toolsets.clear()
        toolset = Toolset.of(specs)
        self._episode_toolsets[id(specs)] = (specs, toolset)
        return toolset

    async def aclose(self) -> None:
        """Close the model clients and whatever the environment pools."""
        await self.clients.aclose()
        await self.env.aclose()

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
