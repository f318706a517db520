"""Scoring a gateway session with one of our environments' verifiers.

`Environment.verify(state, messages)` needs the environment's state at the end of the session. The
agent ran its tools itself, so the gateway has only the conversation. Two ways to get the state:
- `env_state` in the finish request: the agent's harness passes the state it kept (any environment);
- a replay: the state is rebuilt from the task's seed and the session's messages. Supported for
  tictactoe: the policy's `make_move` calls are X's moves, and each successful result's board (the
  environment's JSON) must follow from them plus the opponent's replies; a board that does not is an
  error naming the message, never a guess.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from langchain_core.messages import BaseMessage

from sparring.envs.base import Environment, Verdict
from sparring.envs.registry import get_environment
from sparring.gateway.history import content_text
from sparring.models.wire import from_wire


class VerifierError(ValueError):
    """The session cannot be scored this way; the message says which message or field is wrong."""


Replay = Callable[[Environment, dict[str, Any], Sequence[dict[str, Any]]], Awaitable[Any]]


async def verify_session(
    env_name: str, task: dict[str, Any], messages: Sequence[dict[str, Any]], env_state: Any | None
) -> Verdict:
    """The verdict of `env_name`'s verifier on the session's final state (given, or replayed)."""
    try:
        env = get_environment(env_name)
    except ValueError as exc:
        raise VerifierError(f"verifier: {exc}") from None
    if env_state is None:
        replay = REPLAYS.get(env_name)
        if replay is None:
            raise VerifierError(
                f"verifier: {env_name} cannot be replayed from a conversation; pass its final env_state "
                f"(replayable: {', '.join(sorted(REPLAYS))})"
            )
        env_state = await replay(env, task, messages)
    return await env.verify(env_state, _langchain_messages(messages))


def _langchain_messages(messages: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    converted = []
    for message in messages:
        wire = {**message, "content": content_text(message.get("content"))}
        if wire.get("role") == "developer":
            wire["role"] = "system"
        converted.append(from_wire(wire))
    return converted


async def replay_tictactoe(env: Environment, task: dict[str, Any], messages: Sequence[dict[str, Any]]) -> Any:
    """The board after the session: the task's seed, X's `make_move` calls, and O's replies seen in the results."""
    try:
        state = await env.seed(task)
    except ValueError as exc:
        raise VerifierError(f"task: {exc}") from None
    positions: dict[str, Any] = {}
    last_position: Any = None
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                if function.get("name") == "make_move":
                    try:
                        last_position = orjson.loads(function.get("arguments") or "{}").get("position")
                    except (orjson.JSONDecodeError, AttributeError):
                        last_position = None
                    positions[call.get("id") or ""] = last_position
        elif message.get("role") == "tool":
            result = _board_result(content_text(message.get("content")))
            if result is None or result.get("error"):
                continue  # not a board, or a refused move: the board did not change
            position = positions.get(message.get("tool_call_id") or "", last_position)
            state = await _follow(env, state, position, result["board"], f"messages[{index}]")
    return state


def _board_result(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("board"), list) and len(value["board"]) == 9:
        return value
    return None


async def _follow(env: Environment, state: Any, position: Any, board: list[Any], where: str) -> Any:
    """Play X's call and then whatever moves the result's board adds, in turn; the boards must agree."""
    new = {i: mark for i, mark in enumerate(board) if mark and not state["board"][i]}
    if new.get(position) != "X" or any(mark == "X" for cell, mark in new.items() if cell != position):
        raise VerifierError(
            f"{where}: a result without an error must show the policy's make_move({position!r}) as the only new X"
        )
    while new:
        mark = state["next_mark"]
        actor = "policy" if mark == "X" else "user"
        candidates = [p for p, m in new.items() if m == mark]
        if not candidates:
            break
        cell = position if mark == "X" and position in candidates else candidates[0]
        result = await env.call_tool(state, actor, "make_move", {"position": cell})
        if result.is_error:
            raise VerifierError(f"{where}: {mark} at {cell} is not a legal move: {result.content}")
        state = result.state
        del new[cell]
    if state["board"] != board:
        raise VerifierError(f"{where}: the board {board} does not follow from the moves played before it")
    return state


REPLAYS: dict[str, Replay] = {"tictactoe": replay_tictactoe}
