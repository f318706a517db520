"""`collect --ray`: the batch runner on Ray actors, with a worker killed mid-run, on a loopback-only local Ray."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sparring.options import default_config
from sparring.rollouts.batch import BatchItem
from sparring.rollouts.ray_runner import RayRunner
from sparring.testing import FakeModelServer, ModelRequest
from sparring.testing.responders import tictactoe_players


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray instance of 2 CPUs bound to 127.0.0.1 (the variables must be set before Ray is imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield ray
    finally:
        ray.shutdown()


def slow_players() -> dict[str, Any]:
    """The tic-tac-toe players, the policy thinking 50 ms a move, so episodes are in flight when a worker dies."""
    players = tictactoe_players()

    async def policy(request: ModelRequest) -> Any:
        await asyncio.sleep(0.05)
        return players["policy"](request)

    return {"policy": policy, "user": players["user"]}


async def test_a_killed_worker_loses_only_its_in_flight_episodes(local_ray: Any) -> None:
    async with FakeModelServer(slow_players(), record=False) as server:
        config = replace(
            default_config("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
        )
        runner = RayRunner(config, workers=2, concurrency=4)
        items = [BatchItem(task, repeat, {}, "tictactoe") for task in range(15) for repeat in range(2)]
        seen: Counter[tuple[int, int]] = Counter()
        records = []
        killed = None
        try:
            async for record in runner.run(items):
                seen[(record["task_index"], record["repeat_index"])] += 1
                records.append(record)
                if len(records) == 6:
                    assert runner.in_flight > 0
                    killed = runner.worker_pids[0]
                    os.kill(killed, signal.SIGKILL)
        finally:
            await runner.aclose()
    assert killed is not None
    assert runner.worker_deaths == 1
    assert runner.reruns > 0  # the dead worker held episodes, and they ran again
    assert seen == Counter({(item.task_index, item.repeat_index): 1 for item in items})  # each exactly once
    assert {(r["status"], r["stop_reason"], r["reward"]) for r in records} == {("completed", "env_done", 1.0)}
    assert runner.latency()["policy"].count > 0
    assert sum(c["episodes"] for c in runner.replica_stats()["policy"].values()) >= len(items) - runner.reruns


async def test_an_unknown_environment_fails_its_items_only(local_ray: Any) -> None:
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        config = replace(
            default_config("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
        )

        def config_for(name: str) -> Any:
            return default_config(name) if name != "tictactoe" else config

        runner = RayRunner(config_for, workers=1, concurrency=2)
        items = [BatchItem(0, 0, {}, "tictactoe"), BatchItem(1, 0, {}, "no-such-env"), BatchItem(2, 0, {}, "tictactoe")]
        try:
            records = {r["task_index"]: r async for r in runner.run(items)}
        finally:
            await runner.aclose()
    assert records[0]["status"] == records[2]["status"] == "completed"
    assert (records[1]["status"], records[1]["stop_reason"]) == ("aborted", "invalid_task")
    assert "no-such-env" in records[1]["error"]["message"]


async def test_stop_ends_running_episodes_as_interrupted_records_and_starts_nothing_new(local_ray: Any) -> None:
    players = tictactoe_players()

    async def slow_policy(request: ModelRequest) -> Any:
        await asyncio.sleep(0.3)
        return players["policy"](request)

    async with FakeModelServer({"policy": slow_policy, "user": players["user"]}, record=False) as server:
        config = replace(
            default_config("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
        )
        runner = RayRunner(config, workers=2, concurrency=2)
        items = [BatchItem(task, 0, {}, "tictactoe") for task in range(40)]
        records = []
        try:
            async for record in runner.run(items):
                records.append(record)
                if len(records) == 2:
                    runner.stop(grace_s=0.0)
        finally:
            await runner.aclose()
    keys = [r["task_index"] for r in records]
    assert len(keys) == len(set(keys)) < len(items)
    interrupted = [r for r in records if r["stop_reason"] == "interrupted"]
    assert interrupted and all(r["status"] == "aborted" for r in interrupted)
    assert {r["stop_reason"] for r in records} <= {"env_done", "interrupted"}
