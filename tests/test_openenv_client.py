"""`--env openenv`: sparring's episodes against real OpenEnv servers (openenv's create_app) over loopback.

The servers (tests/openenv_servers.py) run on the openenv venv's python; sparring's side needs only
aiohttp. Covered: a tool episode to the server's done and reward, a plain-action server (tools from
/schema), tool errors, capacity refusals (given up on, and waited out), a server killed mid-episode,
malformed and odd observations, cancelled episodes giving their session back, and env_url checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from openenv_harness import Process, openenv_server

from sparring import Engine, EpisodeSettings
from sparring.core.task import parse_task
from sparring.envs.openenv import OpenEnv, OpenEnvServerError, action_tool, mcp_tools, read_observation
from sparring.testing import Call, FakeModelServer, ModelRequest, Say, Script

STOP = Script([Say("###STOP###")])


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Process]]:
    """All of this module's servers, started together (each takes seconds to a minute to import openenv)."""
    started = {
        "counter": openenv_server("counter", 4),
        "single": openenv_server("counter", 1),
        "echo": openenv_server("echo", 2),
        "victim": openenv_server("counter", 2),
    }
    yield started
    for server in started.values():
        server.kill()


@asynccontextmanager
async def episodes(policy: Any, env_url: str | None, env: OpenEnv | None = None, **settings: Any) -> AsyncIterator[Any]:
    """`play(task)` plays one openenv episode against the scripted model server."""
    async with FakeModelServer({"policy": policy, "user": STOP}) as models:
        config = EpisodeSettings(
            policy_base_urls=[models.base_url],
            user_base_urls=[models.base_url],
            request_timeout_s=30.0,
            env_url=env_url,
            **{**OpenEnv.settings, **settings},
        )
        engine = Engine(config, env="openenv", environments={"openenv": env or OpenEnv()})

        async def play(task: dict[str, Any] | None = None) -> dict[str, Any]:
            return await engine.play(parse_task(task or {}))

        try:
            yield play
        finally:
            await engine.aclose()


def tool_results(record: dict[str, Any]) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "tool"]


async def test_an_episode_plays_to_the_servers_done_and_its_reward_is_the_verdict(servers) -> None:
    policy = Script(
        [Call("add", {"amount": 0}), Call("nope", {}), Call("add", {"amount": 1}), Call("add", {"amount": 1})]
    )
    async with episodes(policy, servers["counter"].url) as play:
        record = await play({"env_seed": {"target": 2}})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
    assert record["reward_components"] == {"return": 1.0}
    assert record["env_result"] == {"done": True, "steps": 3, "rewards": [None, None, None, 1.0]}
    opening = record["messages"][0]["content"]
    assert "The counter is at 0; bring it to 2." in opening, "the reset's observation opens the episode"
    results = tool_results(record)
    assert "amount must be positive" in results[0], "the server's tool error is a tool error: the episode goes on"
    assert "unknown tool 'nope'" in results[1]
    assert results[2:] == ["count is 1", "count is 2"]


async def test_tools_come_from_the_server_in_either_spelling_of_the_schema() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    listed = mcp_tools({"tools": [{"name": "a", "inputSchema": schema}, {"name": "b", "input_schema": schema}]})
    assert [tool["parameters"] for tool in listed] == [schema, schema]
    with pytest.raises(OpenEnvServerError, match=r"tools\[0\]\.name"):
        mcp_tools({"tools": [{"name": "no spaces"}]})
    act = action_tool({"properties": {"metadata": {}, "message": {"type": "string"}}, "required": ["message"]})
    assert act["parameters"]["properties"] == {"message": {"type": "string"}}, "OpenEnv's metadata is not an argument"


async def test_a_server_without_mcp_is_played_through_its_action_schema(servers) -> None:
    policy = Script([Call("act", {"message": "hello"}), Call("act", {"message": 5}), Call("act", {"message": "bye"})])
    async with episodes(policy, servers["echo"].url) as play:
        record = await play()
    assert (record["status"], record["stop_reason"]) == ("completed", "env_done")
    assert record["reward"] == 0.5, "the return: two steps rewarded 0.25"
    results = tool_results(record)
    assert results[0] == '{"echoed":"hello","length":5}'
    assert "message" in results[1] and results[1].startswith("Error"), "our schema check, nothing sent"


async def test_sessions_are_given_back_so_a_one_session_server_plays_episode_after_episode(servers) -> None:
    async with episodes(Script([Call("add", {"amount": 1})]), servers["single"].url) as play:
        records = [await play({"env_seed": {"target": 1}}) for _ in range(3)]
    assert [(r["status"], r["reward"]) for r in records] == [("completed", 1.0)] * 3


async def test_an_episode_that_does_not_reach_done_scores_zero_and_says_why(servers) -> None:
    async with episodes(Script([Call("add", {"amount": 1}), Say("I stop here.")]), servers["counter"].url) as play:
        record = await play({"env_seed": {"target": 5}})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "user_stop", 0.0)
    assert record["env_result"]["reason"] == "no reward before the end" and record["env_result"]["done"] is False


@asynccontextmanager
async def holding_the_only_session(url: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """Another client's session on a one-session server, reset and kept open."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url.replace("http", "ws") + "/ws") as ws:
        await ws.send_json({"type": "reset", "data": {}})
        assert (await ws.receive_json())["type"] == "observation"
        yield ws


async def give_back(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close the held session the way OpenEnv frees its slot: close, then the server's CLOSE frame."""
    await ws.send_json({"type": "close"})
    assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_a_server_at_capacity_is_retried_with_backoff_then_the_episode_aborts(servers) -> None:
    url = servers["single"].url
    waits: list[int] = []

    class Counted(OpenEnv):
        async def _back_off(self, attempt: int) -> None:
            waits.append(attempt)

    async with holding_the_only_session(url), episodes(Script([]), url, env=Counted(capacity_attempts=3)) as play:
        record = await play()
    assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "env_error", None)
    assert record["num_policy_calls"] == 0
    message = record["error"]["message"]
    assert "refused a session 3 times" in message and "CAPACITY_REACHED" in message and "1/1" in message
    assert waits == [1, 2], "a wait before each retry"


async def test_a_refused_session_is_retried_until_the_server_has_room(servers) -> None:
    url = servers["single"].url

    async with holding_the_only_session(url) as held:

        class Freed(OpenEnv):
            async def _back_off(self, attempt: int) -> None:
                if not held.closed:
                    await give_back(held)

        async with episodes(Script([Call("add", {"amount": 1})]), url, env=Freed()) as play:
            record = await play({"env_seed": {"target": 1}})
    assert (record["status"], record["reward"]) == ("completed", 1.0)


async def test_the_backoff_doubles_from_its_base() -> None:
    slept: list[float] = []

    class Timed(OpenEnv):
        async def _back_off(self, attempt: int) -> None:
            slept.append(self.capacity_backoff_s * 2 ** (attempt - 1))

    env = Timed(capacity_backoff_s=0.25)
    for attempt in (1, 2, 3):
        await env._back_off(attempt)
    assert slept == [0.25, 0.5, 1.0]


async def test_a_server_killed_mid_episode_aborts_it_with_the_reason(servers) -> None:
    victim = servers["victim"]
    url = victim.url

    def kill_then_call(request: ModelRequest) -> Call:
        if request.call_index == 1:
            victim.kill()  # SIGKILL between two steps: the next one finds the socket dead
        return Call("add", {"amount": 1})

    async with episodes(kill_then_call, url) as play:
        record = await play({"env_seed": {"target": 5}})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "env_error", None)
    assert tool_results(record) == ["count is 1"]
    assert "the session closed during step: code 1006" in record["error"]["message"]
    assert "the server died or was killed" in record["error"]["message"]


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ("odd_observation", "step 1's observation: field observation.error: must be {error_type, message}"),
        ("crash", "the server answered step with EXECUTION_ERROR: the counter fell over after the tool ran"),
        ("nan_reward", "ended the episode (done) without a reward on any of its 2 observations"),
    ],
)
async def test_malformed_and_unscorable_observations_are_env_errors_that_say_what_was_wrong(
    servers, probe: str, expected: str
) -> None:
    async with episodes(Script([Call(probe, {})]), servers["counter"].url) as play:
        record = await play()
    assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "env_error", None)
    assert expected in record["error"]["message"]


async def test_a_true_reward_is_one(servers) -> None:
    async with episodes(Script([Call("bool_reward", {})]), servers["counter"].url) as play:
        record = await play()
    assert (record["status"], record["reward"]) == ("completed", 1.0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"observation": [], "done": False}, "field observation: must be an object, got []"),
        ({"observation": {}, "done": "yes"}, "field done: must be true or false, got 'yes'"),
        ({"observation": {}}, "field done: must be true or false, got None"),
        ({"observation": {}, "done": True, "reward": "1.0"}, "field reward: must be a number, true/false or null"),
        ({"observation": {}, "done": True, "reward": float("inf")}, "field reward: must be a number"),
        ({"observation": {"tool_name": "t", "error": {"kind": 1}}, "done": False}, "field observation.error"),
    ],
)
def test_each_malformed_observation_is_named(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(OpenEnvServerError) as caught:
        read_observation(data, "step 1")
    assert str(caught.value).startswith("step 1: ") and expected in str(caught.value)


def test_what_the_policy_reads_of_an_observation() -> None:
    mcp = {"tool_name": "t", "result": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
    assert read_observation({"observation": mcp, "done": False}, "s").text == "a\nb"
    plain = {"echoed": "x", "length": 1, "metadata": {"secret": 1}}
    assert read_observation({"observation": plain, "done": False}, "s").text == '{"echoed":"x","length":1}'
    only_metadata = {"metadata": {"board": "X O"}}
    assert read_observation({"observation": only_metadata, "done": False}, "s").text == '{"board":"X O"}'
    assert read_observation({"observation": {"text": "hi"}, "done": True, "reward": 0}, "s").reward == 0.0


async def test_a_cancelled_episode_gives_its_session_back(servers) -> None:
    url = servers["single"].url
    called = asyncio.Event()

    async def wait_forever(request: ModelRequest) -> Say:
        called.set()
        await asyncio.Event().wait()
        return Say("never")

    async with episodes(wait_forever, url) as play:
        episode = asyncio.create_task(play())
        await called.wait()  # the session is open and the policy is thinking
        episode.cancel()
        with pytest.raises(asyncio.CancelledError):
            await episode
    async with episodes(Script([Call("add", {"amount": 1})]), url) as play:
        record = await play({"env_seed": {"target": 1}})
    assert (record["status"], record["reward"]) == ("completed", 1.0), "the one session was free again"


async def test_env_url_from_a_task_must_be_allowed_and_a_dead_url_is_an_env_error(servers) -> None:
    url = servers["counter"].url
    async with episodes(Script([]), None) as play:
        missing = await play()
        refused = await play({"env_url": url})
    assert (missing["stop_reason"], refused["stop_reason"]) == ("invalid_task", "invalid_task")
    assert "--env-url" in missing["error"]["message"]
    assert refused["error"]["message"].startswith("env_url: not a server this run may contact")
    async with episodes(Script([]), None, allow_env_urls=["http://127.0.0.1:9"]) as play:
        dead = await play({"env_url": "http://127.0.0.1:9"})
    assert (dead["status"], dead["stop_reason"]) == ("aborted", "env_error")
    assert "ws://127.0.0.1:9/ws: cannot open a WebSocket" in dead["error"]["message"]
