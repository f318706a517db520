"""sparring as an OpenEnv harness resource: a `ResourceSessionFactory` (openenv.core.harness).

OpenEnv's harness adapters (`MCPHarnessAdapter`), `build_harness_rollout_func` (a TRL `rollout_func`)
and TRL's async GRPO harness worker sample the policy themselves and drive a session's tools. Here a
session is one sparring episode with the harness in the policy's seat (`bridge.Seat`, through the same
`SparringEnvironment` the OpenEnv server uses), the simulated user on the factory's user endpoint.

Fit: the harness ends a rollout when its model stops calling tools, so the environments this suits
are those the policy finishes with tool calls (tic-tac-toe, calendar's tools form). A talking user is
still reachable through the `send_message` tool. A rollout that stops before the episode's end is
scored on the state it left (the model's last words included), as a truncated episode would be.
The reward is `verify`'s alone: tool results carry no `reward`, so OpenEnv's check that the two agree
has nothing to disagree with. Token ids come from the harness's own sampling, not sparring's ledger.

    factory = SparringSessionFactory("tictactoe")          # user endpoint: SPARRING_USER_* / models up
    rollout_func = build_harness_rollout_func(session_factory=factory, harness_adapter=MCPHarnessAdapter(), ...)
"""

from __future__ import annotations

from typing import Any

import orjson
from openenv.core.env_server.mcp_types import CallToolAction, CallToolObservation, Tool
from openenv.core.harness import ResourceSession, ResourceSessionFactory, ToolResult, VerifyResult

from sparring.core.settings import EpisodeSettings
from sparring.engine.settings import resolve_settings
from sparring.envserve.bridge import run_sync
from sparring.envserve.server import Served, SparringEnvironment, SparringResetObservation


class SparringSession(ResourceSession):
    """One sparring episode, the harness in the policy's seat; every call runs on sparring's background loop."""

    def __init__(self, served: Served, task: dict[str, Any], episode_id: str | None) -> None:
        self._env = SparringEnvironment(served)
        opening = self._env.reset(task=task, episode_id=episode_id)
        assert isinstance(opening, SparringResetObservation)
        self._opening = opening

    def initial_messages(self) -> list[dict[str, Any]]:
        return [dict(message) for message in self._opening.messages]

    def list_tools(self) -> list[Tool]:
        seat = self._env.seat
        specs = seat.tools if seat is not None else []
        return [Tool(name=spec.name, description=spec.description, input_schema=spec.parameters) for spec in specs]

    def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        observation = self._env.step(CallToolAction(tool_name=name, arguments=arguments))
        assert isinstance(observation, CallToolObservation)  # what step answers a call_tool action with
        error = observation.error.message if observation.error is not None else None
        data = observation.result if error is None else error
        return ToolResult(data=data, done=observation.done, error=error)

    def verify(self, transcript: list[dict[str, Any]], final_state: Any | None = None) -> VerifyResult:
        """The episode's verdict; for a rollout that ended first, the verdict on the state it left."""
        seat = self._env.seat
        if seat is None:
            return VerifyResult(env_reward=None, done=False, artifacts={"error": "the session was closed"})
        if seat.record is not None:
            record = seat.record
            return VerifyResult(
                env_reward=record["reward"],
                done=True,
                metrics=dict(record["reward_components"]),
                artifacts={
                    "status": record["status"],
                    "stop_reason": record["stop_reason"],
                    "env_result": record["env_result"],
                },
            )
        last = transcript[-1] if transcript else {}
        final_text = last.get("content") if last.get("role") == "assistant" and not last.get("tool_calls") else None
        verdict = run_sync(seat.score_now(final_text if isinstance(final_text, str) else None))
        return VerifyResult(
            env_reward=verdict.reward,
            done=False,
            metrics=dict(verdict.components),
            artifacts={"status": None, "stop_reason": "harness_ended", "env_result": verdict.result},
        )

    def close(self) -> None:
        self._env.close()


class SparringSessionFactory(ResourceSessionFactory[SparringSession]):
    """Sessions of one environment; `settings` default to what `sparring run --env NAME` would use (user only)."""

    def __init__(self, env: str, settings: EpisodeSettings | None = None) -> None:
        self.served = Served.build(env, settings or resolve_settings(env, require=("user",)))

    def create(self, task: Any, seed: int | None = None, episode_id: str | None = None) -> SparringSession:
        """`task`: a sparring task row, its JSON text, or a chat prompt (a list of messages: the task's opening)."""
        if isinstance(task, str):
            task = orjson.loads(task)
        elif isinstance(task, list):
            task = {"messages": task}
        return SparringSession(self.served, dict(task or {}), episode_id)
