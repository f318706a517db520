"""policy_tools / user_tools: run an actor's tool calls in order against the environment.

The actor is bound when the graph is built, so the environment always knows who moved. Bad calls
(unknown tool, malformed or invalid arguments, illegal moves) come back as tool messages and the
episode goes on; an environment that raises is an infrastructure failure and aborts the episode.
Each tool message keeps its `status` and, on an error, whose fault it was (`ToolResult.fault`; our
own argument checks are the caller's), so the record can tell a broken tool from a bad call.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import ToolMessage
from langgraph.runtime import Runtime

from sparring.core.messages import raw_tool_calls
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.envs.base import Actor
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.handover import hand_over
from sparring.nodes.outcome import ended
from sparring.tools.validation import ToolArgumentError, parse_arguments

HISTORY_OF: dict[str, str] = {"policy": "messages", "user": "user_messages"}


async def run_tools(
    state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps, actor: Actor
) -> dict[str, Any]:
    """Answer every tool call of the actor's last message, each with its own tool message."""
    history = HISTORY_OF[actor]
    env_state = state["env_state"]
    started = time.perf_counter()
    specs = deps.tools_for(actor, env_state).specs
    results: list[ToolMessage] = []
    update: dict[str, Any] = {}
    for call in raw_tool_calls(state[history][-1]):
        name, call_id = call["function"]["name"], call["id"]
        spec = specs.get(name)
        try:
            if spec is None:
                known = ", ".join(specs) or "none"
                raise ToolArgumentError(f"unknown tool {name!r}; available: {known}")
            arguments = parse_arguments(spec, call["function"]["arguments"])
        except ToolArgumentError as exc:
            results.append(
                ToolMessage(
                    content=f"Error: {exc}",
                    tool_call_id=call_id,
                    name=name,
                    status="error",
                    additional_kwargs={"fault": "caller"},
                )
            )
            continue
        try:
            result = await deps.env.call_tool(env_state, actor, name, arguments)
        except Exception as exc:
            update = ended("aborted", "env_error", exc)
            break
        env_state = result.state
        results.append(
            ToolMessage(
                content=result.content,
                tool_call_id=call_id,
                name=name,
                status="error" if result.is_error else "success",
                additional_kwargs={"fault": result.fault or "caller"} if result.is_error else {},
            )
        )
    update.update({history: results, "env_state": env_state, "tool_s": state["tool_s"] + time.perf_counter() - started})
    if "status" in update:
        return update
    if deps.env.is_done(env_state):
        update.update(ended("completed", "env_done"))
        return update
    update["turn_over"] = deps.env.turn_over(env_state, actor)
    if actor == "user" and (
        state["user_steps"] >= state["limits"]["max_user_steps_per_turn"]
        or (update["turn_over"] and not state["limits"]["user_words_after_move"])
    ):
        update.update(hand_over(state, deps, env_state, []))
    return update
