"""Weight sync on the real default model (vLLM's CPU build).

Keep: a pause lands while policy calls are generating, a LoRA adapter made here with peft is loaded,
generation resumes; the frozen calls finish with exact ids on the base weights, every call made after
the update goes to the adapter, and an episode that spans the update carries both versions.
Abort: the pause ends the running calls; after the resume each goes on in the same episode, and the
record says which were resumed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from real_server import server_config

from sparring import Engine
from sparring.core.ledger import check_invariants
from sparring.envs.tictactoe import TicTacToe
from sparring.models.local import ServerRecord
from sparring.models.transport import Reply, parse_server_load
from sparring.testing.lora import make_adapter

pytestmark = pytest.mark.vllm

EPISODES = 4


class CallLog:
    """Every policy generation request (renders left out): the model it named, and the phase (0 before
    the pause, 1 paused, 2 resumed) when it was sent and when its answer came."""

    def __init__(self) -> None:
        self.phase = 0
        self.calls: list[tuple[str, int, int]] = []

    def wrap(self, post: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
        async def logged(path: str, payload: bytes, **kwargs: Any) -> Reply:
            sent = self.phase
            reply = await post(path, payload, **kwargs)
            if not path.endswith("/render"):
                self.calls.append((orjson.loads(payload)["model"], sent, self.phase))
            return reply

        return logged


async def running_requests(http: aiohttp.ClientSession, server: ServerRecord) -> float:
    async with http.get(f"{server.root_url}/metrics") as response:
        load = parse_server_load(await response.text(), 0.0)
    assert load is not None, "the server's /metrics has vLLM's gauges"
    return load.running


async def test_a_keep_pause_mid_generation_an_adapter_load_and_a_resume(
    vllm_server: ServerRecord, tmp_path: Path
) -> None:
    pytest.importorskip("peft")
    adapter = make_adapter(vllm_server.model_path, tmp_path / "step-1")
    config = server_config(
        TicTacToe(), vllm_server, max_turns=3, policy_max_tokens=96, user_max_tokens=64, token_mode="tito"
    )
    engine = Engine(config)
    policy, _ = engine.clients.clients(config)
    log = CallLog()
    policy.transport.post = log.wrap(policy.transport.post)  # type: ignore[method-assign]
    try:
        episodes = [asyncio.create_task(engine.play({}, episode_id=f"keep-{i}")) for i in range(EPISODES)]
        async with aiohttp.ClientSession() as http:
            while await running_requests(http, vllm_server) < 2:  # several policy calls are generating
                await asyncio.sleep(0.05)
        log.phase = 1
        await engine.weights.pause("keep")
        report = await engine.weights.update("1", str(adapter))
        log.phase = 2
        await engine.weights.resume()
        records = await asyncio.wait_for(asyncio.gather(*episodes), 1800)
    finally:
        await engine.aclose()
    assert report.taken_out == {} and report.adapter == f"{vllm_server.model}@1"
    for record in records:
        assert record["status"] in ("completed", "truncated"), record["error"]
        trajectory = record["trajectory"]
        assert check_invariants(trajectory) == []
        assert len(trajectory["segments"]) == 1 and trajectory["prefix_mismatches"] == 0
    frozen = [call for call in log.calls if call[1] == 0 and call[2] == 2]
    assert frozen, f"no policy call was generating across the pause: {log.calls}"
    assert {model for model, _, _ in frozen} == {vllm_server.model}, "a frozen call finishes on the base weights"
    after = [model for model, sent, _ in log.calls if sent == 2]
    assert after and set(after) == {f"{vllm_server.model}@1"}, log.calls
    assert not any(sent == 1 for _, sent, _ in log.calls), "nothing is sent while paused"
    for record in records:  # a call carries one version: the weights it ran on, frozen calls included
        for call in record["trajectory"]["calls"]:
            assert call["weight_versions"] is not None and len({s["version"] for s in call["weight_versions"]}) == 1
    sets = [record["weight_versions"]["set"] for record in records]
    assert ["default", "1"] in sets, f"no episode spans the update: {sets}"
    assert all(s in (["default"], ["1"], ["default", "1"]) for s in sets), sets


async def test_an_abort_pause_mid_generation_resumes_the_calls_in_the_same_episodes(vllm_server: ServerRecord) -> None:
    config = server_config(
        TicTacToe(), vllm_server, max_turns=2, policy_max_tokens=96, user_max_tokens=64, token_mode="tito"
    )
    engine = Engine(config)
    try:
        episodes = [asyncio.create_task(engine.play({}, episode_id=f"abort-{i}")) for i in range(EPISODES)]
        async with aiohttp.ClientSession() as http:
            while await running_requests(http, vllm_server) < 2:
                await asyncio.sleep(0.05)
        await engine.weights.pause("abort")
        report = await engine.weights.update("2")
        await engine.weights.resume()
        records = await asyncio.wait_for(asyncio.gather(*episodes), 1800)
    finally:
        await engine.aclose()
    assert report.taken_out == {}
    assert len({record["id"] for record in records}) == EPISODES
    resumed = []
    for record in records:
        assert record["status"] in ("completed", "truncated"), record["error"]
        trajectory = record["trajectory"]
        assert check_invariants(trajectory) == []
        assert len(trajectory["segments"]) == 1 and trajectory["prefix_mismatches"] == 0
        resumed += [call for call in trajectory["calls"] if call["resumed"]]
    for call in resumed:
        assert call["weight_versions"][-1]["version"] == "2", call
    assert resumed, "the pause aborted no policy call"
