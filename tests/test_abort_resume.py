"""A policy call aborted by a pause (vLLM's abort mode) waits for the control to open, then goes on: never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from sparring import Engine, EpisodeSettings
from sparring.core.ledger import check_invariants
from sparring.models.client import EndpointConfig, ModelClient
from sparring.models.generation import GenerationControl
from sparring.testing import FakeModelServer, Say, Script, TicTacToePlayer, TokenGate
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE
from sparring.testing.tokenizer import encode
from sparring.tools.constraints import may_continue, tool_call_constraint

GENERATE = "/inference/v1/generate"
TOOLS = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}]
SPEECH = "I will think about this one carefully before I answer you."
PROMPT = encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@asynccontextmanager
async def episode_engine(server: FakeModelServer, **settings: Any) -> AsyncIterator[Engine]:
    config = EpisodeSettings(
        policy_base_urls=[server.base_url], user_base_urls=[server.base_url], request_timeout_s=5.0, **settings
    )
    engine = Engine(config)
    try:
        yield engine
    finally:
        await engine.aclose()


def policy_control(engine: Engine) -> GenerationControl:
    return engine.clients.clients(engine.settings_for("tictactoe"))[0].control


def watch_waits(control: GenerationControl) -> asyncio.Event:
    """An event set when a call starts waiting for the closed control (the event a test waits on)."""
    waiting = asyncio.Event()
    wait_open = control.wait_open

    async def wait() -> None:
        waiting.set()
        await wait_open()

    control.wait_open = wait  # type: ignore[method-assign]
    return waiting


async def weight_sync(server: FakeModelServer, control: GenerationControl, version: str) -> None:
    """What the control plane does in abort mode: close, pause (aborting what runs), set the version, resume, open."""
    control.close()
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/pause", params={"mode": "abort"})).status_code == 200
        assert (await http.post("/update_weight_version", json={"new_version": version})).status_code == 200
        control.version = version
        assert (await http.post("/resume")).status_code == 200
    control.open()


async def test_an_aborted_reply_goes_on_from_its_partial_tokens_in_the_same_episode() -> None:
    gate = TokenGate()
    policy = Script([Say(SPEECH), Say(SPEECH), Say("Bye.")])  # the continuation asks the script again
    user = Script([Say("Go on."), Say("Fine.")])
    async with (
        FakeModelServer({"policy": policy, "user": user}, token_gate=gate, weight_version="0") as server,
        episode_engine(
            server, token_mode="tito", policy_tool_choice="auto", user_tool_choice="auto", max_turns=2
        ) as engine,
    ):
        control = policy_control(engine)
        control.version = "0"
        episode = asyncio.create_task(engine.play({}))
        gate.allow(6)
        await server.wait_until(lambda: gate.passed == 6)
        await weight_sync(server, control, "1")
        gate.open()
        record = await asyncio.wait_for(episode, 60)
    assert (record["status"], record["num_policy_calls"]) == ("truncated", 2)
    first, second = record["trajectory"]["calls"]
    spoken = encode(SPEECH + "<|im_end|>")
    assert first["completion_len"] == len(spoken) and first["resumed"] == 1 and second["resumed"] == 0
    assert first["weight_versions"] == [
        {"version": "0", "start": 0, "end": 6},
        {"version": "1", "start": 6, "end": len(spoken)},
    ]
    assert record["messages"][2]["content"] == SPEECH and check_invariants(record["trajectory"]) == []
    (segment,) = record["trajectory"]["segments"]
    assert segment["token_ids"][first["prompt_len"] : first["prompt_len"] + len(spoken)] == spoken
    aborted, resumed, _ = [r for r in server.requests if r["model"] == "policy"]
    prompt = aborted["body"]["token_ids"]
    assert resumed["body"]["token_ids"] == prompt + spoken[:6], "the continuation's prompt ends with the partial"
    assert resumed["body"]["sampling_params"]["max_tokens"] == aborted["body"]["sampling_params"]["max_tokens"] - 6
    assert record["weight_versions"] == {"set": ["0", "1"], "min": "0", "max": "1", "current": "1", "staleness": 1}


async def test_an_aborted_tool_call_under_a_constraint_is_made_again_from_its_prompt() -> None:
    gate = TokenGate()
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with (
        FakeModelServer(players, token_gate=gate) as server,
        episode_engine(server, token_mode="tito", user_tool_choice="required") as engine,
    ):
        control = policy_control(engine)
        episode = asyncio.create_task(engine.play({}))
        gate.allow(3)  # "<to": vLLM's grammar would start again at the continuation, so it cannot go on
        await server.wait_until(lambda: gate.passed == 3)
        await weight_sync(server, control, "1")
        gate.open()
        record = await asyncio.wait_for(episode, 60)
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    first = record["trajectory"]["calls"][0]
    assert first["resumed"] == 1 and first["weight_versions"] == [
        {"version": "1", "start": 0, "end": first["completion_len"]}
    ]
    aborted, again = [r for r in server.requests if r["model"] == "policy"][:2]
    assert again["body"]["token_ids"] == aborted["body"]["token_ids"]
    assert "structured_outputs" in again["body"]["sampling_params"]
    assert check_invariants(record["trajectory"]) == [] and record["trajectory"]["prefix_mismatches"] == 0


async def test_an_aborted_call_waits_for_the_control_to_open_before_it_goes_on() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": Say(SPEECH)}, token_gate=gate) as server:
        client = ModelClient(EndpointConfig((server.base_url,), "policy", capture_tokens=True))
        waiting = watch_waits(client.control)
        try:
            call = asyncio.create_task(client.complete_tokens(PROMPT, episode_id="e1", sampling={"max_tokens": 100}))
            gate.allow(4)
            await server.wait_until(lambda: gate.passed == 4)
            client.control.close()
            async with httpx.AsyncClient(base_url=server.url) as http:
                ids = [job.request_id for job in server.engine.running]
                assert (await http.post("/abort_requests", json={"request_ids": ids})).json()["aborted"] == 1
            await waiting.wait()
            assert len(server.requests) == 1, "nothing is sent while the control is closed"
            gate.open()
            client.control.open()
            completion = await asyncio.wait_for(call, 60)
        finally:
            await client.aclose()
    assert completion.resumed == 1 and completion.finish_reason == "stop"
    assert completion.completion_token_ids == encode(SPEECH + "<|im_end|>") and completion.text == SPEECH
    assert len(completion.completion_logprobs or []) == len(completion.completion_token_ids)
    assert [r["path"] for r in server.requests] == [GENERATE, GENERATE]


async def test_on_the_chat_path_an_aborted_call_is_made_again_and_has_no_versions() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": Say(SPEECH)}, token_gate=gate) as server:
        client = ModelClient(EndpointConfig((server.base_url,), "policy", capture_tokens=True))
        try:
            call = asyncio.create_task(
                client.chat([{"role": "user", "content": "hi"}], episode_id="e1", sampling={"max_tokens": 100})
            )
            gate.allow(4)
            await server.wait_until(lambda: gate.passed == 4)
            await weight_sync(server, client.control, "1")
            gate.open()
            completion = await asyncio.wait_for(call, 60)
        finally:
            await client.aclose()
    assert completion.resumed == 1 and completion.text == SPEECH and completion.weight_versions is None
    first, again = server.requests
    assert first["body"]["messages"] == again["body"]["messages"]


def test_a_reply_goes_on_from_its_partial_only_where_the_grammar_would_start_over_the_same() -> None:
    required = tool_call_constraint(TOOLS, "required")
    auto = tool_call_constraint(TOOLS, "auto")
    assert may_continue(None, "anything <tool_call>")
    assert not may_continue(required, "")
    assert may_continue(auto, "I think 4 is best")
    assert not may_continue(auto, "Mine: <tool_call>\n{")
    assert not may_continue(auto, "Mine: <tool_")
    assert not may_continue({"structural_tag": "not json"}, "text")
