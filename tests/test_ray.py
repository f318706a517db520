"""`collect --ray`: the batch runner on Ray actors, with a worker killed mid-run, on a loopback-only local Ray.

The command-line tests come first: each starts its own local Ray in a `sparring collect` process, and
they should not run beside the module's shared instance (2 cores).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from sparring.cli import make_parser
from sparring.cli.collect import spec_from_args
from sparring.core.errors import UsageError
from sparring.engine.batch import BatchItem, BatchRunner
from sparring.engine.collect import make_runner
from sparring.engine.ray_runner import RayRunner
from sparring.engine.settings import default_settings
from sparring.testing import FakeModelServer, ModelRequest
from sparring.testing.responders import tictactoe_players

SPARRING = [sys.executable, "-m", "sparring.cli"]


def write_tasks(path: Path, count: int) -> Path:
    path.write_text("".join(orjson.dumps({"id": f"task-{i}"}).decode() + "\n" for i in range(count)))
    return path


def pairs(path: Path) -> Counter[tuple[int, int]]:
    """Every line must be a whole record."""
    return Counter((r["task_index"], r["repeat_index"]) for r in map(orjson.loads, path.read_bytes().splitlines()))


async def test_collect_ray_stopped_by_ctrl_c_then_resumed_has_every_episode_once(tmp_path: Path) -> None:
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 10), tmp_path / "out.jsonl"
    async with FakeModelServer(slow_players(), record=False) as server:
        argv = ["collect", "--ray", "--workers", "2", "--concurrency", "3", "--repeats", "6", "--quiet"]
        argv += ["--input", str(tasks), "--output", str(out), "--timeout", "30"]
        argv += ["--policy-base-url", server.base_url, "--user-base-url", server.base_url]
        # Its own session, so the signal reaches the whole group (driver and Ray's processes), as Ctrl-C does.
        proc = await asyncio.create_subprocess_exec(
            *SPARRING, *argv, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        while not (out.exists() and len(out.read_bytes().splitlines()) >= 5):
            assert proc.returncode is None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            await asyncio.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 130, stderr
        assert "Resume with:" in stderr and "--ray" in stderr.split("Resume with:")[1]
        first = pairs(out)
        assert max(first.values()) == 1 and sum(first.values()) < 60

        resume = await asyncio.create_subprocess_exec(*SPARRING, *argv, "--resume", stderr=asyncio.subprocess.PIPE)
        stderr = (await resume.stderr.read()).decode()  # type: ignore[union-attr]
        assert await resume.wait() == 0, stderr
    assert pairs(out) == Counter({(task, repeat): 1 for task in range(10) for repeat in range(6)})
    metrics = orjson.loads(Path(f"{out}.metrics.json").read_bytes())
    assert metrics["by_status"] == {"completed": 60} and metrics["model_call_latency_s"]["policy"]["count"] > 0
    assert metrics["replicas"]["policy"][server.base_url]["episodes"] > 0


async def test_plain_collect_never_imports_ray(tmp_path: Path) -> None:
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        argv = ["collect", "--input", str(tasks), "--output", str(out), "--quiet"]
        argv += ["--policy-base-url", server.base_url, "--user-base-url", server.base_url]
        script = (
            "import sys; from sparring.cli import main; code = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'collect imported ray'; sys.exit(code)"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, *argv, stderr=asyncio.subprocess.PIPE)
        stderr = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert await proc.wait() == 0, stderr
    assert pairs(out) == Counter({(0, 0): 1, (1, 0): 1})


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
            default_settings("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
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
    assert runner.stats().latency["policy"].count > 0
    assert sum(c["episodes"] for c in runner.stats().replicas["policy"].values()) >= len(items) - runner.reruns


async def test_an_unknown_environment_fails_its_items_only(local_ray: Any) -> None:
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        config = replace(
            default_settings("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
        )

        def config_for(name: str) -> Any:
            return default_settings(name) if name != "tictactoe" else config

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
            default_settings("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
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


def test_address_and_workers_go_with_ray() -> None:
    argv = ["collect", "--input", "tasks.jsonl", "--output", "out.jsonl", "--policy-base-url", "http://127.0.0.1:9/v1"]
    for extra in (["--workers", "3"], ["--address", "auto"]):
        with pytest.raises(UsageError, match="go with --ray"):
            make_runner(spec_from_args(make_parser().parse_args([*argv, *extra])), default_settings)
    assert isinstance(make_runner(spec_from_args(make_parser().parse_args(argv)), default_settings), BatchRunner)
    spec = spec_from_args(make_parser().parse_args([*argv, "--ray", "--workers", "3"]))
    ray_runner = make_runner(spec, default_settings)
    assert isinstance(ray_runner, RayRunner) and (ray_runner.workers, ray_runner.concurrency) == (3, 8)
