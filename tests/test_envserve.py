"""`sparring env-serve`: sparring's environments on openenv's own server, driven by openenv's own clients.

Runs in the openenv venv (`scripts/test.sh`: `.venv-openenv/bin/pytest -m openenv`). The simulated
user is the scripted model server; the client (OpenEnv's GenericEnvClient, MCPToolClient, its harness,
sparring's own `--env openenv`) plays the policy.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import pytest
import uvicorn
from openenv.core import GenericEnvClient
from openenv.core.env_server.mcp_types import CallToolAction, ListToolsAction
from openenv.core.harness import MCPHarnessAdapter, ModelStepResult, build_harness_rollout_func
from openenv.core.llm_client import LLMResponse, ToolCall
from openenv.core.mcp_client import MCPToolClient
from openenv_harness import ROOT, Process

from sparring import Engine, EpisodeSettings
from sparring.core.task import parse_task
from sparring.engine.settings import default_settings
from sparring.envs.openenv import OpenEnv
from sparring.envserve.harness import SparringSessionFactory
from sparring.envserve.server import TicTacToeEnvironment, build_app
from sparring.testing import Call, FakeModelServer, Say, Script, TicTacToePlayer

pytestmark = pytest.mark.openenv
O_LAST = (0, 1, 3, 5, 7)
"""O's preferences that let X win on 4, 8, 2, 6 (the board's diagonal and column)."""


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An app on a free loopback port, in its own thread and event loop."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:  # set by uvicorn's startup in the thread; nothing to await across threads
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


def settings_for(env: str, user_url: str, **extra: Any) -> EpisodeSettings:
    return replace(default_settings(env), user_base_urls=[user_url], request_timeout_s=30.0, **extra)


@asynccontextmanager
async def env_server(env: str, user: Any, max_sessions: int = 4, **extra: Any) -> AsyncIterator[str]:
    """`sparring env-serve env` in-process, its user played by `user` on the scripted model server."""
    async with FakeModelServer({"user": user}) as models:
        with serving(build_app(env, settings_for(env, models.base_url, **extra), max_sessions)) as url:
            yield url


def client(url: str) -> GenericEnvClient:
    return GenericEnvClient(base_url=url, message_timeout_s=120.0)


def move(cell: int) -> dict[str, Any]:
    return {"type": "call_tool", "tool_name": "make_move", "arguments": {"position": cell}}


async def test_openenvs_client_plays_x_to_the_verdict() -> None:
    async with env_server("tictactoe", TicTacToePlayer(preference=O_LAST)) as url, client(url) as env:
        opening = await env.reset(task={"id": "t1"}, episode_id="mine")
        assert [tool["name"] for tool in opening.observation["tools"]] == ["make_move", "send_message"]
        assert "You are X and you move first" in opening.observation["messages"][-1]["content"]
        taken = await env.step(move(4))
        assert taken.observation["error"] is None and '"next_mark":"X"' in taken.observation["result"]
        again = await env.step(move(4))
        assert again.observation["error"]["error_type"] == "execution_error"
        assert "already taken" in again.observation["error"]["message"] and not again.done
        for cell in (8, 2):
            result = await env.step(move(cell))
            assert not result.done and result.reward is None
        final = await env.step(move(6))
        state = await env.state()
    assert (final.done, final.reward) == (True, 1.0)
    metadata = final.observation["metadata"]
    assert (metadata["status"], metadata["stop_reason"], metadata["reward_components"]) == (
        "completed",
        "env_done",
        {"outcome": 1.0},
    )
    assert state["episode_id"] == "mine" and state["status"] == "completed" and state["env_state"]["winner"] == "X"


async def test_words_reach_the_simulated_user_through_send_message() -> None:
    user = Script([Say("Hi, I want to cancel my pending order."), Say("Great, thanks. ###STOP###")])
    async with env_server("support-desk", user) as url, client(url) as env:
        opening = await env.reset(task_id="sd-01")  # env_seed fields at the top level, as generic clients send
        assert "cancel my pending order" in opening.observation["messages"][-1]["content"]
        bad = await env.step({"type": "call_tool", "tool_name": "send_message", "arguments": {"words": "hi"}})
        assert bad.observation["error"]["error_type"] == "invalid_args"
        said = await env.step({"type": "call_tool", "tool_name": "send_message", "arguments": {"text": "Done."}})
    assert said.done and said.observation["metadata"]["stop_reason"] == "user_stop"
    assert said.observation["result"] == "Great, thanks."
    assert isinstance(said.reward, float)


async def test_a_bad_task_is_an_error_frame_naming_the_field() -> None:
    async with env_server("tictactoe", TicTacToePlayer()) as url, client(url) as env:
        with pytest.raises(RuntimeError, match=r"invalid_task.*initial_moves"):
            await env.reset(initial_moves=[{"position": 9, "mark": "X"}])


async def test_openenvs_mcp_client_lists_and_calls_tools_in_a_session() -> None:
    async with (
        env_server("tictactoe", TicTacToePlayer(preference=O_LAST)) as url,
        MCPToolClient(base_url=url, message_timeout_s=120.0) as env,
    ):
        await env.reset()
        tools = await env.list_tools()
        called = await env.call_tool("make_move", position=4)
    assert {tool.name for tool in tools} == {"make_move", "send_message"}
    assert called["error"] is None and called["tool_name"] == "make_move" and called["done"] is False


async def test_a_full_server_refuses_as_openenv_reports_it() -> None:
    async with env_server("tictactoe", TicTacToePlayer(), max_sessions=1) as url, client(url) as first:
        await first.reset()
        async with client(url) as second:
            with pytest.raises(RuntimeError, match="CAPACITY_REACHED"):
                await second.reset()


async def test_sparrings_own_openenv_client_plays_sparrings_served_environment() -> None:
    """Both directions at once: `--env openenv` against `env-serve tictactoe`."""
    policy = Script([Call("make_move", {"position": cell}) for cell in (4, 8, 2, 6)])
    async with FakeModelServer({"policy": policy, "user": Say("###STOP###"), "o": TicTacToePlayer(O_LAST)}) as models:
        inner = settings_for("tictactoe", models.base_url, user_model="o")
        with serving(build_app("tictactoe", inner)) as url:
            outer = EpisodeSettings(
                policy_base_urls=[models.base_url],
                user_base_urls=[models.base_url],
                request_timeout_s=60.0,
                env_url=url,
                **OpenEnv.settings,
            )
            engine = Engine(outer, env="openenv")
            try:
                record = await engine.play(parse_task({}))
            finally:
                await engine.aclose()
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
    tools = {call["function"]["name"] for m in record["messages"] for call in m.get("tool_calls") or ()}
    assert tools == {"make_move"}


def x_moves(cells: list[int]) -> Any:
    """A harness ModelStep playing these X moves, then answering in words (which ends the harness's rollout)."""

    def model_step(messages: list[dict[str, Any]], tools: list[Any], sampling: dict[str, Any]) -> ModelStepResult:
        played = sum(1 for m in messages if m.get("role") == "tool")
        if played >= len(cells):
            return ModelStepResult(response=LLMResponse(content="I am done."))
        call = ToolCall(id=f"c{played}", name="make_move", args={"position": cells[played]})
        return ModelStepResult(response=LLMResponse(content="", tool_calls=[call]), completion_ids=[1])

    return model_step


async def test_sparring_is_a_resource_session_factory_for_openenvs_harness() -> None:
    async with FakeModelServer({"user": TicTacToePlayer(O_LAST)}) as models:
        factory = SparringSessionFactory("tictactoe", settings_for("tictactoe", models.base_url))

        def rollouts(cells: list[int]) -> dict[str, Any]:
            run = build_harness_rollout_func(
                session_factory=factory,
                harness_adapter=MCPHarnessAdapter(),
                model_step_builder=lambda trainer, session: x_moves(cells),
            )
            return run(['{"id": "t1"}'], None)

        won = await asyncio.to_thread(rollouts, [4, 8, 2, 6])  # the harness is sync: off the loop serving the user
        stopped = await asyncio.to_thread(rollouts, [4])
    assert won["env_reward"] == [1.0] and won["verify_metrics"] == [{"outcome": 1.0}]
    assert stopped["env_reward"] == [0.0], "stopped after one move: scored on the board it left"


async def test_a_zero_argument_class_works_as_nemo_gym_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeModelServer({"user": TicTacToePlayer(O_LAST)}) as models:
        monkeypatch.setenv("SPARRING_USER_BASE_URL", models.base_url)

        def as_nemo_gym() -> tuple[Any, Any, Any]:
            env = TicTacToeEnvironment()  # NeMo Gym: Cls(); reset(); step(ListToolsAction()); step(CallToolAction)
            opening = env.reset()
            tools = env.step(ListToolsAction())
            result = env.step(CallToolAction(tool_name="make_move", arguments={"position": 4}))
            env.close()
            return opening, tools, result

        opening, tools, result = await asyncio.to_thread(as_nemo_gym)
    assert opening.messages and {tool.name for tool in tools.tools} == {"make_move", "send_message"}
    assert result.error is None and "X played 4" in result.result


async def test_openenv_validate_passes_and_env_serve_runs_as_a_user_starts_it() -> None:
    async with FakeModelServer({"user": TicTacToePlayer(O_LAST)}) as models:
        command = [sys.executable, "-m", "sparring.cli", "env-serve", "tictactoe", "--port", "0"]
        served = Process([*command, "--user-base-url", models.base_url, "--user-model", "user"])
        try:
            url = await asyncio.to_thread(lambda: served.url)
            validate = [os.path.join(os.path.dirname(sys.executable), "openenv"), "validate", "--url", url]
            checked = await asyncio.to_thread(subprocess.run, validate, capture_output=True, text=True, cwd=ROOT)
            async with client(url) as env:
                await env.reset()
                moved = await env.step(move(4))
        finally:
            served.kill()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert moved.observation["error"] is None and "X played 4" in moved.observation["result"]
