"""LangGraph Studio's server for real: `langgraph dev` on a free loopback port, offline, serving langgraph.json.

Episodes run against the scripted model server in a child process; the dev server's graph reaches it
through the base URLs each run passes as its context, as Studio's settings form would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeInput
from sparring.core.task import Task
from sparring.envs.registry import environment_names
from sparring.studio import graph_variable
from sparring.testing import FakeModelProcess

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"LANGGRAPH_NO_VERSION_CHECK": "1", "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
LOOPBACK = ("--host", "127.0.0.1", "--port")
EPISODE_NODES = {"seed", "policy", "policy_tools", "user", "user_tools", "verify"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`langgraph dev` from a scratch directory (its .langgraph_api/ store goes there), stopped after the module."""
    langgraph = shutil.which("langgraph", path=str(REPO / ".venv" / "bin")) or shutil.which("langgraph")
    assert langgraph, "the langgraph CLI is missing: pip install -e '.[studio]' (scripts/install.sh does)"
    workdir = tmp_path_factory.mktemp("langgraph-dev")
    port = free_port()
    log = (workdir / "dev.log").open("wb")
    process = subprocess.Popen(
        [
            langgraph,
            "dev",
            "--config",
            str(REPO / "langgraph.json"),
            "--no-browser",
            "--no-reload",
            *LOOPBACK,
            str(port),
        ],
        cwd=workdir,
        env={**os.environ, **OFFLINE},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"langgraph dev exited: {(workdir / 'dev.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                f"langgraph dev not up in 180 s: {(workdir / 'dev.log').read_text()[-3000:]}"
            )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def model_server() -> Iterator[str]:
    with FakeModelProcess("tictactoe") as server:
        yield server.base_url


@pytest.fixture
async def api(dev_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dev_server, timeout=120) as client:
        yield client


def settings(model_server: str) -> dict[str, Any]:
    """What a person would type into the settings form to use the scripted server (chat token mode)."""
    return {
        "policy_base_urls": [model_server],
        "user_base_urls": [model_server],
        "policy_model": "policy",
        "user_model": "user",
        "policy_tokenizer": None,
        "request_timeout_s": 10.0,
    }


async def tictactoe_assistant(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.post("/assistants/search", json={"graph_id": "tictactoe"})
    response.raise_for_status()
    (assistant,) = response.json()
    return assistant


async def new_thread(api: httpx.AsyncClient) -> str:
    response = await api.post("/threads", json={})
    response.raise_for_status()
    return response.json()["thread_id"]


async def run(api: httpx.AsyncClient, thread: str, body: dict[str, Any]) -> dict[str, Any]:
    """One run to its end or its interrupt; returns the thread's state afterwards."""
    response = await api.post(f"/threads/{thread}/runs/wait", json=body)
    response.raise_for_status()
    assert "__error__" not in response.json(), response.json()
    state = await api.get(f"/threads/{thread}/state")
    state.raise_for_status()
    return state.json()


def test_langgraph_json_serves_every_registered_environment() -> None:
    graphs = json.loads((REPO / "langgraph.json").read_text())["graphs"]
    expected = {graph_variable(name): f"sparring.studio:{graph_variable(name)}" for name in environment_names()}
    assert {name: spec["path"] for name, spec in graphs.items()} == expected, (
        "langgraph.json must list one graph per environment in sparring/envs/registry.py"
    )


def test_the_input_form_is_the_task_model() -> None:
    schema = TypeAdapter(EpisodeInput).json_schema()
    assert set(schema["properties"]["task"]["properties"]) == set(Task.model_fields)


async def test_assistants_show_the_graph_settings_and_task_form(api: httpx.AsyncClient) -> None:
    response = await api.post("/assistants/search", json={})
    assert {a["graph_id"] for a in response.json()} == {graph_variable(name) for name in environment_names()}
    assistant = await tictactoe_assistant(api)

    graph = (await api.get(f"/assistants/{assistant['assistant_id']}/graph")).json()
    assert {node["id"] for node in graph["nodes"]} >= EPISODE_NODES
    assert {"source": "policy", "target": "policy_tools", "conditional": True} in graph["edges"]

    schemas = (await api.get(f"/assistants/{assistant['assistant_id']}/schemas")).json()
    form = schemas["context_schema"]["properties"]
    assert set(form) == {f.name for f in fields(EpisodeSettings)}
    assert all(spec.get("description") and "default" in spec for spec in form.values()), "every setting: default + help"
    assert form["user_tool_choice"]["default"] == "required", "tictactoe's own settings are the defaults"
    assert form["max_steps_per_turn"]["default"] == 3
    task_form = schemas["input_schema"]["properties"]["task"]["properties"]
    assert {"messages", "env_seed", "user_persona", "limits"} <= set(task_form)
    assert all(spec.get("description") for spec in task_form.values())
    state = schemas["state_schema"]["properties"]
    assert {"messages", "user_messages", "ledger", "reward", "status", "human_turn"} <= set(state)


async def test_an_episode_runs_to_its_verdict_and_time_travel_reruns_it(
    api: httpx.AsyncClient, model_server: str
) -> None:
    assistant = await tictactoe_assistant(api)
    thread = await new_thread(api)
    body = {"assistant_id": assistant["assistant_id"], "context": settings(model_server)}
    state = await run(api, thread, {**body, "input": {"task": {"id": "studio-1"}}})

    values = state["values"]
    assert state["next"] == []
    assert (values["status"], values["stop_reason"], values["reward"]) == ("completed", "env_done", 1.0)
    assert values["env_result"]["game_result"] == "win"
    assert len(values["ledger"]) == values["num_policy_calls"] == 4
    assert [m["type"] for m in values["messages"][:3]] == ["system", "human", "ai"]
    assert values["user_messages"][0]["type"] == "system"

    history = (await api.post(f"/threads/{thread}/history", json={"limit": 100})).json()
    for checkpoint in history:  # every step's checkpoint holds that step's data, never a later one's
        step = checkpoint["values"]
        assert len(step.get("ledger") or []) == (step.get("num_policy_calls") or 0)
    second_call = next(c for c in history if c["next"] == ["policy"] and c["values"]["num_policy_calls"] == 1)
    rerun = await run(api, thread, {**body, "input": None, "checkpoint_id": second_call["checkpoint"]["checkpoint_id"]})
    assert (rerun["values"]["status"], rerun["values"]["reward"]) == ("completed", 1.0)
    assert rerun["checkpoint"]["checkpoint_id"] != state["checkpoint"]["checkpoint_id"]
    assert rerun["values"]["messages"][: len(second_call["values"]["messages"])] == second_call["values"]["messages"]
    history_after = (await api.post(f"/threads/{thread}/history", json={"limit": 200})).json()
    assert len(history_after) > len(history), "the rerun is a new branch; the first run's steps stay"


async def test_a_person_plays_the_user_between_interrupts(api: httpx.AsyncClient, model_server: str) -> None:
    assistant = await tictactoe_assistant(api)
    thread = await new_thread(api)
    body = {"assistant_id": assistant["assistant_id"], "context": settings(model_server), "interrupt_before": ["user"]}

    state = await run(api, thread, {**body, "input": {"task": {}}})
    assert state["next"] == ["user"]
    assert state["values"]["env_state"]["board"][4] == "X"  # the scripted X opens in the centre
    calls_before = state["values"]["num_user_calls"]

    move = {"tool_calls": [{"name": "make_move", "arguments": {"position": 8}}]}
    (await api.post(f"/threads/{thread}/state", json={"values": {"human_turn": move}})).raise_for_status()
    state = await run(api, thread, {**body, "input": None})
    assert state["next"] == ["user"], "after the person's move, the user's words are still to come"
    assert state["values"]["env_state"]["board"][8] == "O"
    assert state["values"]["human_turn"] is None

    (
        await api.post(f"/threads/{thread}/state", json={"values": {"human_turn": "I took the corner."}})
    ).raise_for_status()
    state = await run(api, thread, {**body, "input": None})
    values = state["values"]
    said = [m for m in values["messages"] if m["type"] == "human" and m["content"] == "I took the corner."]
    assert len(said) == 1 and said[0]["additional_kwargs"].get("actor") != "env"
    typed = [m for m in values["user_messages"] if m["additional_kwargs"].get("human")]
    assert [m["content"] for m in typed] == ["", "I took the corner."]
    assert typed[0]["tool_calls"][0]["args"] == {"position": 8}
    assert values["num_user_calls"] == calls_before, "a person's steps are not model calls"

    for _ in range(20):  # the rest of the game: the user model plays each paused step
        if not state["next"]:
            break
        state = await run(api, thread, {**body, "input": None})
    assert state["next"] == []
    assert state["values"]["status"] == "completed" and state["values"]["reward"] is not None
    assert state["values"]["num_user_calls"] > calls_before


async def test_a_malformed_human_turn_stops_before_the_user_and_can_be_fixed(
    api: httpx.AsyncClient, model_server: str
) -> None:
    assistant = await tictactoe_assistant(api)
    thread = await new_thread(api)
    body = {"assistant_id": assistant["assistant_id"], "context": settings(model_server), "interrupt_before": ["user"]}
    await run(api, thread, {**body, "input": {"task": {}}})
    (await api.post(f"/threads/{thread}/state", json={"values": {"human_turn": {"move": 8}}})).raise_for_status()
    response = await api.post(f"/threads/{thread}/runs/wait", json={**body, "input": None})
    assert "human_turn: expected text, or" in json.dumps(response.json())
    state = (await api.get(f"/threads/{thread}/state")).json()
    assert state["next"] == ["user"] and state["values"]["status"] is None

    (await api.post(f"/threads/{thread}/state", json={"values": {"human_turn": "Your move."}})).raise_for_status()
    state = await run(api, thread, {**body, "input": None})
    assert any(m["content"] == "Your move." for m in state["values"]["messages"])
