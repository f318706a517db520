"""The remote environment against a NeMo Gym-shaped resources server written here (FastAPI, real HTTP).

The server is a counter: `/seed_session` starts a session (cookie) at the row's `start`, tools
`/increment` and `/get_count` act on it, and `/verify` rewards 1 when the count reached the row's
`target` and the assistant's last message says it. Nothing in sparring knows this server: the
row's `tools` and the URL are all it gets.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

from sparring import Engine, EpisodeSettings
from sparring.core.errors import SeedError
from sparring.core.task import parse_task
from sparring.envs.remote import Remote, nemo_gym_response
from sparring.testing import Call, FakeModelServer, Say, Script

COOKIE = "counter_session"
TOOLS = [
    {
        "type": "function",
        "name": "increment",
        "description": "Add to the counter.",
        "parameters": {
            "type": "object",
            "properties": {"amount": {"type": "integer"}},
            "required": ["amount"],
            "additionalProperties": False,
        },
        "strict": True,
    },
    {"type": "function", "name": "get_count", "description": "Read the counter.", "parameters": {"type": "object"}},
]


class Increment(BaseModel):
    amount: int = Field(ge=1, le=10)


class CounterServer:
    """A resources server in NeMo Gym's shape, with a log of what it received."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.log: list[tuple[str, str | None, Any]] = []
        app = FastAPI()

        @app.post("/seed_session")
        async def seed_session(request: Request, response: Response) -> dict[str, Any]:
            row = await request.json()
            session = uuid.uuid4().hex
            self.counts[session] = row.get("start", 0)
            self.log.append(("seed_session", session, row))
            response.set_cookie(COOKIE, session)
            return {}

        @app.post("/increment")
        async def increment(body: Increment, request: Request) -> dict[str, int]:
            session = self._session(request)
            self.counts[session] += body.amount
            self.log.append(("increment", session, body.amount))
            return {"count": self.counts[session]}

        @app.post("/get_count")
        async def get_count(request: Request) -> dict[str, int]:
            return {"count": self.counts[self._session(request)]}

        @app.post("/explode")
        async def explode() -> dict[str, Any]:
            raise RuntimeError("the resources server broke")

        @app.post("/verify")
        async def verify(request: Request) -> dict[str, Any]:
            body = await request.json()
            session = self._session(request)
            self.log.append(("verify", session, body))
            output = body["response"]["output"]
            texts = [part["text"] for item in output if item["type"] == "message" for part in item["content"]]
            reached = self.counts[session] == body["target"]
            said = bool(texts) and str(body["target"]) in texts[-1]
            return {**body, "reward": float(reached and said), "final_count": self.counts[session]}

        self.app = app

    def _session(self, request: Request) -> str:
        session = request.cookies.get(COOKIE)
        if session not in self.counts:
            raise HTTPException(400, "no session: call /seed_session first")
        return session


@pytest.fixture(scope="module")
def counter() -> Iterator[tuple[CounterServer, str]]:
    """The counter server on a free loopback port, in its own thread and event loop."""
    resources = CounterServer()
    server = uvicorn.Server(uvicorn.Config(resources.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield resources, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def row(target: int, start: int = 0, **extra: Any) -> dict[str, Any]:
    """A NeMo Gym row for the counter server."""
    return {
        "responses_create_params": {
            "input": [
                {"role": "system", "content": "Use the tools."},
                {"role": "user", "content": f"Bring the counter to {target}."},
            ],
            "tools": TOOLS,
        },
        "start": start,
        "target": target,
        **extra,
    }


@asynccontextmanager
async def episodes(policy: Any, *, env_url: str | None, allow: tuple[str, ...] = ()) -> AsyncIterator[Any]:
    """`play(task)` runs one remote episode against the scripted model server."""
    user = Script([Say("###STOP###")])
    async with FakeModelServer({"policy": policy, "user": user}) as models:
        config = EpisodeSettings(
            policy_base_urls=[models.base_url],
            user_base_urls=[models.base_url],
            request_timeout_s=5.0,
            env_url=env_url,
            allow_env_urls=list(allow),
            **Remote.settings,
        )
        engine = Engine(config, env="remote")

        async def play(task: dict[str, Any]) -> dict[str, Any]:
            return await engine.play(parse_task(task))

        try:
            yield play
        finally:
            await engine.aclose()


async def test_a_nemo_gym_row_plays_through_the_graph_and_the_server_scores_it(counter) -> None:
    resources, url = counter
    policy = Script([Call("increment", {"amount": 2}), Call("increment", {"amount": 3}), Say("The counter is at 5.")])
    async with episodes(policy, env_url=url) as play:
        record = await play(row(target=5))
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "user_stop", 1.0)
    assert record["env_result"] == {"final_count": 5}
    sessions = {session for _, session, _ in resources.log if session}
    seeded = [entry for entry in resources.log if entry[0] == "seed_session" and entry[1] in sessions]
    mine = seeded[-1][1]
    calls = [(kind, amount) for kind, session, amount in resources.log if session == mine and kind == "increment"]
    assert calls == [("increment", 2), ("increment", 3)], "both calls ran in the episode's own session"
    posted_row = seeded[-1][2]
    assert posted_row["target"] == 5 and posted_row["responses_create_params"]["tools"] == TOOLS
    verify = next(body for kind, session, body in resources.log if kind == "verify" and session == mine)
    kinds = [item["type"] for item in verify["response"]["output"]]
    assert kinds == ["function_call", "function_call_output"] * 2 + ["message"]
    assert verify["response"]["output"][1]["output"] == '{"count":2}'


async def test_a_wrong_count_scores_zero_and_a_task_env_url_picks_an_allowed_server(counter) -> None:
    _, url = counter
    policy = Script([Call("increment", {"amount": 4}), Say("The counter is at 5.")])
    async with episodes(policy, env_url="http://127.0.0.1:9/unused", allow=(url + "/",)) as play:
        record = await play({**row(target=5), "env_url": url})
    assert (record["status"], record["reward"]) == ("completed", 0.0)
    assert record["env_result"] == {"final_count": 4}


async def test_a_task_env_url_the_operator_did_not_allow_is_refused_before_anything_is_sent(counter) -> None:
    resources, url = counter
    before = len(resources.log)
    async with episodes(Script([Say("hi")]), env_url=None) as play:
        record = await play({**row(target=1), "env_url": url})
    assert (record["status"], record["stop_reason"], record["num_policy_calls"]) == ("aborted", "invalid_task", 0)
    assert record["error"]["message"] == (
        "env_url: not a server this run may contact; its operator allows them with --env-url and --allow-env-url"
    )
    assert len(resources.log) == before, "the server heard nothing"


async def test_bad_arguments_are_tool_errors_from_our_schema_or_the_server_and_the_episode_goes_on(counter) -> None:
    _, url = counter
    policy = Script(
        [
            Call("increment", {"amount": "two"}),  # breaks the row's schema: our own check
            Call("increment", {"amount": 50}),  # valid JSON schema, refused by the server (422)
            Call("reset", {}),  # not one of the row's tools
            Call("increment", {"amount": 5}),
            Say("Done: 5."),
        ]
    )
    async with episodes(policy, env_url=url) as play:
        record = await play(row(target=5))
    errors = [m["content"] for m in record["messages"] if m["role"] == "tool"][:3]
    assert "amount" in errors[0] and errors[0].startswith("Error")
    assert errors[1].startswith("Error: HTTP 422") and "less than or equal to 10" in errors[1]
    assert "unknown tool 'reset'" in errors[2] and "increment" in errors[2]
    assert (record["status"], record["reward"]) == ("completed", 1.0)


async def test_concurrent_episodes_keep_their_own_sessions(counter) -> None:
    _, url = counter
    policy = Script([Call("increment", {"amount": 3}), Say("It is 3.")])
    async with episodes(policy, env_url=url) as play:
        records = await asyncio.gather(*(play(row(target=3)) for _ in range(8)))
    assert [r["reward"] for r in records] == [1.0] * 8


async def test_a_server_failure_aborts_the_episode_with_the_error(counter) -> None:
    _, url = counter
    tools = [*TOOLS, {"type": "function", "name": "explode", "parameters": {"type": "object"}}]
    task = row(target=1)
    task["responses_create_params"]["tools"] = tools
    async with episodes(Script([Call("explode", {})]), env_url=url) as play:
        record = await play(task)
    assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "env_error", None)
    assert "HTTP 500" in record["error"]["message"] and "/explode" in record["error"]["message"]


async def test_no_server_unreachable_server_and_bad_tools_end_the_episode_with_a_clear_error(counter) -> None:
    async with episodes(Script([Say("hi")]), env_url=None, allow=("http://127.0.0.1:9", counter[1])) as play:
        missing = await play(row(target=1))
        unreachable = await play({**row(target=1), "env_url": "http://127.0.0.1:9"})
        reserved = row(target=1)
        reserved["responses_create_params"]["tools"] = [{"type": "function", "name": "verify", "parameters": {}}]
        bad_tool = await play({**reserved, "env_url": counter[1]})
    assert (missing["status"], missing["stop_reason"]) == ("aborted", "invalid_task")
    assert "--env-url" in missing["error"]["message"] and "SPARRING_ENV_URL" in missing["error"]["message"]
    assert (unreachable["status"], unreachable["stop_reason"]) == ("aborted", "env_error"), "the task was fine"
    assert "127.0.0.1:9/seed_session" in unreachable["error"]["message"]
    assert (bad_tool["status"], bad_tool["stop_reason"]) == ("aborted", "invalid_task")
    assert "tools[0].name" in bad_tool["error"]["message"] and "own endpoints" in bad_tool["error"]["message"]


async def test_seed_requires_the_conversation() -> None:
    with pytest.raises(SeedError, match="messages"):
        await Remote().seed({"env_url": "http://127.0.0.1:9", "messages": []})


def test_the_response_shape_has_what_nemo_gym_validates() -> None:
    from langchain_core.messages import AIMessage, ToolMessage

    call = {"id": "c1", "type": "function", "function": {"name": "get_count", "arguments": "{}"}}
    response = nemo_gym_response(
        [AIMessage(content="", additional_kwargs={"tool_calls": [call]}), ToolMessage("3", tool_call_id="c1")], TOOLS
    )
    assert {"id", "created_at", "model", "object", "output", "parallel_tool_calls", "tool_choice", "tools"} <= set(
        response
    )
    assert response["output"] == [
        {
            "id": "fc_c1",
            "type": "function_call",
            "call_id": "c1",
            "name": "get_count",
            "arguments": "{}",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "3"},
    ]
