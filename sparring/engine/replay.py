"""Scoring a conversation that was not played through the graph: seed, replay the tool calls, verify.

`sparring verify` (NeMo Gym rollouts, sparring records) and the gateway's verifiers (an agent's
session) both score this way, for any environment. The task seeds a fresh state; each assistant
tool call is run again, in order, as the policy's, against the environment (a call the environment
refuses changes nothing, as in the episode); each tool result the agent saw is then offered to the
environment's `follow_result`, so what the call alone cannot give (tic-tac-toe: the opponent's
reply) is taken from the result, or refused with a `ReplayError` naming the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from sparring.core.errors import ReplayError, SeedError
from sparring.core.messages import raw_tool_calls
from sparring.envs.base import Environment, Verdict
from sparring.tools.validation import ToolArgumentError, parse_arguments


async def replay(env: Environment, task: dict[str, Any], messages: Sequence[BaseMessage], episode_id: str) -> Any:
    """The environment's state after the conversation's tool calls and results, from the task's seed.

    The replay is an episode of its own (`open_episode`): the caller closes it (`close_episode`).
    """
    try:
        state = await env.open_episode(task, episode_id)
    except SeedError as exc:
        raise ReplayError(f"task: {exc}") from None
    for index, message in enumerate(messages):
        if isinstance(message, AIMessage):
            specs = {spec.name: spec for spec in env.episode_tools(state, "policy")}
            for call in raw_tool_calls(message):
                spec = specs.get(call["function"]["name"])
                if spec is None:
                    continue
                try:
                    arguments = parse_arguments(spec, call["function"]["arguments"])
                except ToolArgumentError:
                    continue
                state = (await env.call_tool(state, "policy", spec.name, arguments)).state
        elif isinstance(message, ToolMessage):
            try:
                state = env.follow_result(state, str(message.content))
            except ReplayError as exc:
                raise ReplayError(f"messages[{index}]: {exc}") from None
    return state


async def score(
    env: Environment, task: dict[str, Any], messages: Sequence[BaseMessage], env_state: Any | None = None
) -> Verdict:
    """The verdict on the conversation: on `env_state` when the caller kept it, else on the replayed state."""
    if env_state is not None:
        return await env.verify(env_state, messages)
    episode_id = f"replay-{uuid.uuid4().hex}"
    try:
        return await env.verify(await replay(env, task, messages, episode_id), messages)
    finally:
        await env.close_episode(episode_id)
