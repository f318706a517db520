"""seed: the environment's fresh state, the policy's opening, the user's flipped opening and the limits."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from sparring.graphs.context import EpisodeConfig
from sparring.graphs.state import EpisodeState, Limits
from sparring.models.wire import from_wire
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended
from sparring.rollouts.runner import new_episode_id


async def seed(state: EpisodeState, runtime: Runtime[EpisodeConfig], *, deps: EpisodeDeps) -> dict[str, Any]:
    """Start the episode; a seed the environment rejects ends it at once as aborted (invalid_task)."""
    task = state["task"]
    if runtime.context.env_url and not task.get("env_url"):
        task = {**task, "env_url": runtime.context.env_url}
    base: dict[str, Any] = {
        "episode_id": state.get("episode_id") or new_episode_id(),  # runs from Studio bring only a task
        "limits": resolve_limits(runtime.context, task),
        "turn": 0,
        "policy_steps": 0,
        "user_steps": 0,
        "turn_over": False,
        "num_policy_calls": 0,
        "num_user_calls": 0,
        "usage": {},
        "model_s": 0.0,
        "tool_s": 0.0,
        "started_at": time.time(),
        "status": None,
        "stop_reason": None,
        "error": None,
    }
    try:
        env_state = await deps.env.seed(task)
    except Exception as exc:
        return {**base, "turn_start": 0, **ended("aborted", "invalid_task", exc)}
    opening = [dict(m) for m in task.get("messages") or deps.env.default_messages()]
    observation = deps.env.observe(env_state, "policy")
    messages = [from_wire(m) for m in opening]
    if observation and isinstance(messages[-1], HumanMessage):
        messages[-1] = HumanMessage(content=f"{messages[-1].content}\n\n{observation}")
    for message in messages:
        message.additional_kwargs["actor"] = "env"
    update = {
        **base,
        "env_state": env_state,
        "messages": messages,
        "turn_start": len(messages),
        "user_messages": user_view_of_opening(deps.env.user_persona(task), opening),
    }
    if deps.env.is_done(env_state):
        update.update(ended("completed", "env_done"))
    return update


def resolve_limits(config: EpisodeConfig, task: dict[str, Any]) -> Limits:
    """The run's limits with the task's `limits` overrides applied."""
    overrides = task.get("limits") or {}
    return {
        "max_turns": overrides.get("max_turns", config.max_turns),
        "max_steps_per_turn": overrides.get("max_steps_per_turn", config.max_steps_per_turn),
        "max_user_steps_per_turn": overrides.get("max_user_steps_per_turn", config.max_user_steps_per_turn),
        "user_stop_tokens": list(overrides.get("user_stop_tokens", config.user_stop_tokens)),
        "user_tool_choice": overrides.get("user_tool_choice", config.user_tool_choice),
        "policy_tool_choice": overrides.get("policy_tool_choice", config.policy_tool_choice),
    }


def user_view_of_opening(persona: str, opening: list[dict[str, Any]]) -> list[BaseMessage]:
    """The user's persona, then the opening's user/assistant text with roles swapped.

    The policy's system prompt is never part of it.
    """
    view: list[BaseMessage] = [SystemMessage(content=persona)]
    for message in opening:
        role, content = message.get("role"), message.get("content") or ""
        if role not in ("user", "assistant") or not content:
            continue
        flipped_type = AIMessage if role == "user" else HumanMessage
        if isinstance(view[-1], flipped_type):
            view[-1] = flipped_type(content=f"{view[-1].content}\n\n{content}")
        else:
            view.append(flipped_type(content=content))
    return view
