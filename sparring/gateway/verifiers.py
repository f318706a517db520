"""Scoring a gateway session with one of our environments' verifiers, for any environment.

`Environment.verify(state, messages)` needs the environment's state at the end of the session. The
agent ran its tools itself, so the gateway has only the conversation. Two ways to get the state:
- `env_state` in the finish request: the agent's harness passes the state it kept;
- a replay (`sparring.engine.replay`, the same one `sparring verify` uses): the task's seed, the
  policy's tool calls run again, and what each result shows beyond the call (tic-tac-toe: the
  opponent's reply) followed; a result that cannot follow is an error naming the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from sparring.core.errors import ReplayError, UsageError
from sparring.core.messages import from_wire
from sparring.engine.replay import score
from sparring.envs.base import Verdict
from sparring.envs.registry import get_environment
from sparring.gateway.history import content_text


class VerifierError(ValueError):
    """The session cannot be scored this way; the message says which message or field is wrong."""


async def verify_session(
    env_name: str, task: dict[str, Any], messages: Sequence[dict[str, Any]], env_state: Any | None
) -> Verdict:
    """The verdict of `env_name`'s verifier on the session's final state (given, or replayed)."""
    try:
        env = get_environment(env_name)
    except UsageError as exc:
        raise VerifierError(f"verifier: {exc}") from None
    try:
        return await score(env, task, _langchain_messages(messages), env_state)
    except ReplayError as exc:
        raise VerifierError(str(exc)) from None
    finally:
        await env.aclose()


def _langchain_messages(messages: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    converted = []
    for message in messages:
        wire = {**message, "content": content_text(message.get("content"))}
        if wire.get("role") == "developer":
            wire["role"] = "system"
        converted.append(from_wire(wire))
    return converted
