"""Real OpenEnv servers for the interop tests, built with openenv's own `create_app` (needs the openenv venv).

    .venv-openenv/bin/python tests/openenv_servers.py counter --max-sessions 4

prints `PORT <n>` once it has a loopback port, then serves until killed. Kinds:
- `counter`: an MCP tool environment (openenv's MCPEnvironment with FastMCP tools) counting towards
  the reset's `target`: `add(amount)` and `read()`; the step that reaches the target says done with
  reward 1.0. Probe tools make the server send what a client must survive: `bool_reward` (reward
  true, done), `nan_reward` (reward NaN, done: OpenEnv sends null), `crash` (the environment raises
  after the tool ran: an EXECUTION_ERROR frame) and `odd_observation` (an observation whose `error`
  is a plain string, not OpenEnv's `{error_type, message}`).
- `echo`: a plain action environment with no MCP (the shape `openenv init` makes): the action is
  `{"message": str}`, the observation echoes it, every step is rewarded 0.25, and "bye" ends it.
"""

from __future__ import annotations

import argparse
import math
import socket
from typing import Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.mcp_environment import MCPEnvironment
from openenv.core.env_server.mcp_types import CallToolAction, CallToolObservation
from openenv.core.env_server.types import Action, Observation, State


class Text(Observation):
    """A reset observation with one text field."""

    text: str


class OddObservation(Observation):
    """Looks like a tool call's observation, but its error is a bare string."""

    tool_name: str
    error: str


class CounterState(State):
    count: int = 0
    target: int = 0


class Counter(MCPEnvironment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        mcp = FastMCP("counter")
        self.count = 0
        self.target = 0
        self.steps = 0
        self.episode_id: str | None = None
        self.probe: str | None = None

        @mcp.tool
        def add(amount: int) -> str:
            """Add a positive amount to the counter."""
            if amount < 1:
                raise ToolError(f"amount must be positive, got {amount}")
            self.count += amount
            return f"count is {self.count}"

        @mcp.tool
        def read() -> str:
            """Read the counter."""
            return f"count is {self.count}"

        for name in ("bool_reward", "nan_reward", "crash", "odd_observation"):
            mcp.tool(self._probe(name), name=name, description=f"Probe: {name}.")
        super().__init__(mcp)

    def _probe(self, name: str) -> Any:
        def probe() -> str:
            self.probe = name
            return "ok"

        return probe

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, target: int = 3, start: int = 0, **kwargs: Any
    ) -> Observation:
        self.count, self.target, self.steps, self.episode_id, self.probe = start, target, 0, episode_id, None
        return Text(text=f"The counter is at {start}; bring it to {target}.")

    async def step_async(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        return self._scored(action, await super().step_async(action, timeout_s=timeout_s, **kwargs))

    def step(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        return self._scored(action, super().step(action, timeout_s=timeout_s, **kwargs))

    def _scored(self, action: Action, observation: Observation) -> Observation:
        """MCP tool results carry no reward: the step sets done and the reward from the counter."""
        self.steps += 1
        if not isinstance(action, CallToolAction):
            return observation
        probe, self.probe = self.probe, None
        if probe == "crash":
            raise RuntimeError("the counter fell over after the tool ran")
        if probe == "odd_observation":
            return OddObservation(tool_name=action.tool_name, error="something broke")
        if probe == "bool_reward":
            observation.reward, observation.done = True, True
        elif probe == "nan_reward":
            observation.reward, observation.done = math.nan, True
        elif self.count >= self.target:
            observation.reward, observation.done = 1.0, True
        return observation

    def _step_impl(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        raise ValueError(f"unexpected action {type(action).__name__}")

    @property
    def state(self) -> CounterState:
        return CounterState(episode_id=self.episode_id, step_count=self.steps, count=self.count, target=self.target)


class EchoAction(Action):
    """Say something; the environment echoes it."""

    message: str


class EchoObservation(Observation):
    echoed: str = ""
    length: int = 0


class Echo(Environment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.episode_id: str | None = None

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> EchoObservation:
        self.steps, self.episode_id = 0, episode_id
        return EchoObservation(echoed="ready", length=0, reward=None)

    def step(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> EchoObservation:
        assert isinstance(action, EchoAction)
        self.steps += 1
        done = action.message == "bye"
        return EchoObservation(echoed=action.message, length=len(action.message), reward=0.25, done=done)

    @property
    def state(self) -> State:
        return State(episode_id=self.episode_id, step_count=self.steps)


def build(kind: str, max_sessions: int) -> Any:
    if kind == "counter":
        return create_app(
            Counter,
            CallToolAction,
            CallToolObservation,
            env_name="counter",
            max_concurrent_envs=max_sessions,
            state_cls=CounterState,
        )
    return create_app(Echo, EchoAction, EchoObservation, env_name="echo", max_concurrent_envs=max_sessions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["counter", "echo"])
    parser.add_argument("--max-sessions", type=int, default=4)
    args = parser.parse_args()
    app = build(args.kind, args.max_sessions)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn serves them: a client needs no retry loop
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
