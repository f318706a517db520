"""Least-loaded routing over two real vLLM replicas of the default model (vLLM's CPU build).

Two servers of this module's own (the session's server has LoRA on and serves the other tests); the
simulated user is the scripted server, so every real call is a policy call. First, another client
keeps one replica generating: sparring reads that from its /metrics and sends every new episode to
the other. Then, with both idle, two episodes that start together go one to each replica (both
servers paused in keep mode while they start, so neither can finish before the other is placed).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
from real_server import server_config

from sparring import Engine
from sparring.core.ledger import check_invariants
from sparring.envs.tictactoe import TicTacToe
from sparring.models.local import ROLES, ServerOptions, ServerRecord, free_port, start_server, stop_server
from sparring.testing import FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE

pytestmark = pytest.mark.vllm

HOG_TOKENS = 1500
"""Another client's request on replica a: long enough to outlast the episodes placed meanwhile (asserted)."""


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerRecord]]:
    """Two servers of the default model, started side by side, stopped at the end of the module."""
    options = ServerOptions(python=os.environ.get("SPARRING_VLLM_PYTHON"))

    def one(port: int) -> ServerRecord:
        def progress(message: str, *, transient: bool = False) -> None:
            if not transient:
                print(f"[vllm :{port}] {message}", file=sys.stderr, flush=True)

        return start_server(None, ROLES, port, options, progress)

    ports = [free_port(), free_port()]
    assert ports[0] != ports[1]
    started: list[ServerRecord] = []
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(one, port) for port in ports]
        errors = []
        for future in futures:
            try:
                started.append(future.result())
            except Exception as exc:  # stop the one that did start before failing
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield started
    finally:
        for record in started:
            stop_server(record)


async def _until(predicate: Callable[[], bool]) -> None:
    """Re-check `predicate` as the loop runs (state inside sparring: pins, metrics read)."""
    while not predicate():
        await asyncio.sleep(0.02)


def _assert_sound(record: dict[str, Any]) -> None:
    assert record["status"] in ("completed", "truncated"), record["error"]
    trajectory = record["trajectory"]
    assert check_invariants(trajectory) == []
    assert len(trajectory["segments"]) == 1 and trajectory["prefix_mismatches"] == 0


async def test_new_episodes_go_to_the_least_loaded_of_two_replicas(replicas: list[ServerRecord]) -> None:
    a, b = replicas
    async with FakeModelServer({"user": TicTacToePlayer(O_PREFERENCE)}) as user:
        config = server_config(
            TicTacToe(),
            a,
            policy_base_urls=[a.base_url, b.base_url],
            user_base_urls=[user.base_url],
            user_model="user",
            user_tool_choice="required",
            max_turns=1,
            policy_max_tokens=16,
            token_mode="tito",
        )
        engine = Engine(config)
        policy, _ = engine.clients.clients(config)
        assert policy.replicas is not None
        pins = policy.replicas
        engine.watch_policy_load(0.2)
        hog = {
            "model": a.model,
            "prompt": "Count from one to a thousand:",
            "max_tokens": HOG_TOKENS,
            "ignore_eos": True,
        }
        try:
            async with aiohttp.ClientSession() as other_client:
                hogs = [asyncio.create_task(other_client.post(f"{a.base_url}/completions", json=hog)) for _ in range(2)]

                def a_busy() -> bool:
                    load = pins.server_loads().get(a.base_url)
                    return load is not None and load.running + load.waiting >= 2

                await asyncio.wait_for(_until(a_busy), 600)
                busy_records = [await engine.play({}, episode_id=f"while-busy-{i}") for i in range(3)]
                assert not any(h.done() for h in hogs), "the other client's requests outlasted the episodes"
                for h in hogs:
                    h.cancel()  # closing the connections aborts them in vLLM
                await asyncio.gather(*hogs, return_exceptions=True)
            stats = pins.stats()
            assert (stats[a.base_url]["episodes"], stats[b.base_url]["episodes"]) == (0, 3), stats

            def a_idle() -> bool:
                load = pins.server_loads().get(a.base_url)
                return load is not None and load.running + load.waiting == 0

            await asyncio.wait_for(_until(a_idle), 600)
            async with aiohttp.ClientSession() as control:
                for server in (a, b):  # nothing generates until both episodes are placed
                    assert (await control.post(f"{server.root_url}/pause", params={"mode": "keep"})).status == 200
                first = asyncio.create_task(engine.play({}, episode_id="together-0"))
                await asyncio.wait_for(_until(lambda: sum(s["active"] for s in pins.stats().values()) == 1), 600)
                second = asyncio.create_task(engine.play({}, episode_id="together-1"))
                await asyncio.wait_for(_until(lambda: sum(s["active"] for s in pins.stats().values()) == 2), 600)
                placed = {url: s["active"] for url, s in pins.stats().items()}
                for server in (a, b):
                    await control.post(f"{server.root_url}/resume")
            together = await asyncio.wait_for(asyncio.gather(first, second), 1200)
            stats = engine.stats().replicas["policy"]
        finally:
            await engine.aclose()
    assert placed == {a.base_url: 1, b.base_url: 1}, "two episodes started together: one per idle replica"
    for record in busy_records + list(together):
        _assert_sound(record)
    assert (stats[a.base_url]["episodes"], stats[b.base_url]["episodes"]) == (1, 4), stats
