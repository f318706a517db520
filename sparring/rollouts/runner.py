"""Run one episode on the compiled graph and always come back with a record."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from sparring.graphs.context import EpisodeConfig
from sparring.rollouts.record import build_record


def new_episode_id(task_index: int | None = None, repeat_index: int = 0) -> str:
    """Unique, and readable in server logs (X-Session-ID)."""
    prefix = "ep" if task_index is None else f"t{task_index}-r{repeat_index}"
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def run_episode(
    graph: CompiledStateGraph,
    task: dict[str, Any],
    config: EpisodeConfig,
    *,
    env: str,
    task_index: int | None = None,
    repeat_index: int = 0,
    episode_id: str | None = None,
    on_update: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Play one episode. A bug or crash anywhere still yields a record, status `aborted`, with the error.

    `on_update(node, update)` sees each node's update as it happens (the CLI's live transcript).
    """
    episode_id = episode_id or new_episode_id(task_index, repeat_index)
    started = time.time()
    graph_input = {"task": task, "episode_id": episode_id}
    try:
        if on_update is None:
            state = await graph.ainvoke(graph_input, context=config)
        else:
            state = await _stream(graph, graph_input, config, on_update)
    except Exception as exc:
        state = {
            "task": task,
            "status": "aborted",
            "stop_reason": "internal_error",
            "wall_s": time.time() - started,
            "error": {"type": type(exc).__name__, "message": str(exc)},
        }
    return build_record(state, env=env, episode_id=episode_id, task_index=task_index, repeat_index=repeat_index)


async def _stream(
    graph: CompiledStateGraph,
    graph_input: dict[str, Any],
    config: EpisodeConfig,
    on_update: Callable[[str, dict[str, Any]], None],
) -> dict[str, Any]:
    """Run while reporting every node's update; returns the final state."""
    state: dict[str, Any] = {}
    async for mode, chunk in graph.astream(graph_input, context=config, stream_mode=["updates", "values"]):
        if mode == "values":
            state = chunk
        else:
            for node, update in chunk.items():
                on_update(node, update or {})
    return state
