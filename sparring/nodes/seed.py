"""seed: the task checked, the environment's fresh state, the openings of both views, the limits and sampling."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from sparring.core.errors import EnvServerError, TaskError
from sparring.core.ids import new_episode_id
from sparring.core.messages import from_wire
from sparring.core.outbound import task_env_url
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState, Limits
from sparring.core.task import parse_task
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended


async def seed(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """Start the episode; a task or seed that cannot be played ends it at once as aborted (invalid_task), and
    an environment server that cannot start it as aborted (env_error)."""
    settings = runtime.context
    base: dict[str, Any] = {
        "episode_id": state.get("episode_id") or new_episode_id(),  # runs from Studio bring only a task
        "limits": resolve_limits(settings, {}),
        "sampling": {},
        "turn": 0,
        "policy_steps": 0,
        "user_steps": 0,
        "turn_over": False,
        "turn_holder": "policy",
        "num_policy_calls": 0,
        "num_user_calls": 0,
        "usage": {},
        "model_s": 0.0,
        "tool_s": 0.0,
        "started_at": time.time(),
        "status": None,
        "stop_reason": None,
        "error": None,
        "attribution": None,
    }
    try:
        task = parse_task(state["task"])  # every face, Studio included, refuses the same tasks
    except TaskError as exc:
        return {**base, "turn_start": 0, **ended("aborted", "invalid_task", exc)}
    try:  # a task may only pick one of the servers the operator allowed (core/outbound.py)
        env_url = task_env_url(task.get("env_url"), settings.env_url, settings.allow_env_urls)
    except TaskError as exc:
        return {**base, "turn_start": 0, **ended("aborted", "invalid_task", exc)}
    if env_url:
        task = {**task, "env_url": env_url}
    base["limits"] = resolve_limits(settings, task)
    base["sampling"] = {"policy": settings.sampling("policy", task.get("sampling")), "user": settings.sampling("user")}
    try:
        env_state = await deps.env.open_episode(task, base["episode_id"])
    except EnvServerError as exc:  # the task is fine, its server is not: worth a retry
        return {**base, "turn_start": 0, **ended("aborted", "env_error", exc)}
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


def resolve_limits(config: EpisodeSettings, task: dict[str, Any]) -> Limits:
    """The run's limits with the task's `limits` overrides applied."""
    overrides = task.get("limits") or {}
    return {
        "max_turns": overrides.get("max_turns", config.max_turns),
        "max_steps_per_turn": overrides.get("max_steps_per_turn", config.max_steps_per_turn),
        "max_user_steps_per_turn": overrides.get("max_user_steps_per_turn", config.max_user_steps_per_turn),
        "user_stop_tokens": list(overrides.get("user_stop_tokens", config.user_stop_tokens)),
        "user_tool_choice": overrides.get("user_tool_choice", config.user_tool_choice),
        "policy_tool_choice": overrides.get("policy_tool_choice", config.policy_tool_choice),
        "user_words_after_move": config.user_words_after_move,
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
