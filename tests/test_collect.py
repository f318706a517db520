"""`sparring collect`: input formats, bad lines, resume, failures and retry, replicas, Ctrl-C and kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from sparring.cli import make_parser
from sparring.cli.collect import collect_command
from sparring.cli.options import UsageError
from sparring.core.task import TaskError, parse_task
from sparring.engine.output import failures_path, metrics_path
from sparring.testing import Fail, FakeModelServer, Hang
from sparring.testing.responders import ModelRequest, tictactoe_players

SPARRING = [sys.executable, "-m", "sparring.cli"]


def write_tasks(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else orjson.dumps(row).decode()) + "\n" for row in rows))
    return path


def records(path: Path) -> list[dict[str, Any]]:
    """Every line must be a whole record."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def pairs(path: Path) -> Counter[tuple[int, int]]:
    return Counter((r["task_index"], r["repeat_index"]) for r in records(path))


def endpoint_args(*urls: str) -> list[str]:
    args = []
    for url in urls:
        args += ["--policy-base-url", url, "--user-base-url", url]
    return [*args, "--timeout", "30"]


async def run_collect(*argv: str) -> int:
    return await collect_command(make_parser().parse_args(["collect", *argv]))


def slow_players(delay_s: float) -> dict[str, Any]:
    """The tic-tac-toe players, each answer `delay_s` late (so episodes are in flight when we strike)."""
    players = tictactoe_players()
    return {role: (lambda request, p=player: Hang(delay_s, p(request))) for role, player in players.items()}


async def test_both_row_formats_run_and_bad_lines_are_reported_with_their_line(tmp_path: Path, capsys) -> None:
    tasks = write_tasks(
        tmp_path / "tasks.jsonl",
        [
            {"id": "own", "env_seed": {"initial_moves": [{"position": 4, "mark": "X"}]}},
            {
                "responses_create_params": {"input": [{"role": "user", "content": "Let's play."}]},
                "verifier_metadata": {},
            },
            "{not json",
            {"responses_create_params": {"input": "Play X, please."}},
            {"id": "typo", "limitz": {}},
        ],
    )
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        code = await run_collect(
            "--input", str(tasks), "--output", str(out), "--quiet", *endpoint_args(server.base_url)
        )
    err = capsys.readouterr().err
    assert code == 1, "bad lines make the exit code 1, after everything else ran"
    assert f"{tasks}:3: not valid JSON" in err and f"{tasks}:5: field limitz: Extra inputs are not permitted" in err
    assert pairs(out) == Counter({(0, 0): 1, (1, 0): 1, (3, 0): 1}), "indices are line positions, bad lines included"
    by_index = {r["task_index"]: r for r in records(out)}
    assert all(r["status"] == "completed" for r in by_index.values())
    opening = by_index[3]["messages"][0]
    assert opening["role"] == "user" and opening["content"].startswith("Play X, please.\n")
    assert by_index[0]["env_result"]["board"][4] == "X" and by_index[0]["task_id"] == "own"
    metrics = orjson.loads(metrics_path(out).read_bytes())
    assert metrics["episodes"] == 3 and metrics["invalid_tasks"] == 2


def test_nemo_gym_string_input_is_one_user_message() -> None:
    task = parse_task({"responses_create_params": {"input": "hi"}, "verifier_metadata": {"a": 1}})
    assert task["messages"] == [{"role": "user", "content": "hi"}] and task["env_seed"] == {"a": 1}
    with pytest.raises(TaskError, match=r"field responses_create_params\.input: must be a string or a list"):
        parse_task({"responses_create_params": {"input": 3}}, "x.jsonl:7")


async def test_an_existing_output_is_never_appended_to_without_resume(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"task_index": 0, "repeat_index": 0, "status": "completed"}\n')
    with pytest.raises(UsageError, match="--resume"):
        await run_collect("--input", str(tasks), "--output", str(out), *endpoint_args("http://127.0.0.1:9/v1"))


async def test_resume_cuts_a_torn_last_line_and_runs_only_what_is_missing(tmp_path: Path, capsys) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(4)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        common = [
            "--input",
            str(tasks),
            "--output",
            str(out),
            "--repeats",
            "2",
            "--quiet",
            *endpoint_args(server.base_url),
        ]
        assert await run_collect(*common, "--limit", "2") == 0
        first = records(out)
        assert len(first) == 4
        with open(out, "ab") as handle:  # what a crash in the middle of a write leaves
            handle.write(orjson.dumps(first[0])[:100])
        assert await run_collect(*common, "--resume") == 0
    assert "cut a torn last line (100 bytes" in capsys.readouterr().err
    assert pairs(out) == Counter({(t, r): 1 for t in range(4) for r in range(2)})
    assert records(out)[:4] == first, "records already written stay as they were"


async def test_failures_go_to_the_failures_file_and_retry_failed_reruns_exactly_those(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(4)])
    out = tmp_path / "out.jsonl"
    players = tictactoe_players()

    def policy_failing_for_odd_tasks(request: ModelRequest) -> Any:
        task_index = int((request.session_id or "t0").split("-")[0][1:])
        return Fail(500) if task_index % 2 else players["policy"](request)

    common = ["--input", str(tasks), "--output", str(out), "--repeats", "2", "--quiet"]
    async with FakeModelServer({"policy": policy_failing_for_odd_tasks, "user": players["user"]}) as server:
        assert await run_collect(*common, *endpoint_args(server.base_url)) == 1
    failed = records(failures_path(out))
    assert sorted((r["task_index"], r["repeat_index"]) for r in failed) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert all(r["stop_reason"] == "model_error" and "HTTP 500" in r["error"]["message"] for r in failed)
    assert Counter(r["status"] for r in records(out)) == {"completed": 4, "aborted": 4}
    kept = [r for r in records(out) if r["status"] == "completed"]

    async with FakeModelServer(tictactoe_players()) as server:
        assert await run_collect(*common, "--retry-failed", *endpoint_args(server.base_url)) == 0
        rerun_sessions = {r["headers"]["X-Session-ID"].split("-", 2)[0] for r in server.requests}
    assert rerun_sessions == {"t1", "t3"}, "only the failed tasks ran again"
    assert pairs(out) == Counter({(t, r): 1 for t in range(4) for r in range(2)})
    assert all(r["status"] == "completed" for r in records(out))
    assert records(out)[:4] == kept
    assert len(records(failures_path(out))) == 4, "the failures file is a log: the old failures stay"
    assert orjson.loads(metrics_path(out).read_bytes())["by_status"] == {"completed": 8}


def servers_of(record: dict[str, Any], *servers: FakeModelServer) -> list[FakeModelServer]:
    return [s for s in servers if any(r["headers"].get("X-Session-ID") == record["id"] for r in s.requests)]


async def test_each_episode_sticks_to_one_replica_and_the_spread_is_even(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(40)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players()) as a, FakeModelServer(tictactoe_players()) as b:
        argv = ["--input", str(tasks), "--output", str(out), "--concurrency", "4", "--quiet"]
        assert await run_collect(*argv, *endpoint_args(a.base_url, b.base_url)) == 0
        assert all(len(servers_of(r, a, b)) == 1 for r in records(out)), "an episode's calls all go to one replica"
        on_a = sum(servers_of(r, a, b) == [a] for r in records(out))
    assert 10 <= on_a <= 30, f"{on_a} of 40 episodes on replica a"
    served = orjson.loads(metrics_path(out).read_bytes())["replicas"]["policy"]
    assert served[a.base_url]["episodes"] == on_a and served[b.base_url]["episodes"] == 40 - on_a


async def test_a_replica_that_dies_is_taken_out_and_its_episodes_move(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(16)])
    out = tmp_path / "out.jsonl"
    b = FakeModelServer(slow_players(0.05))
    async with FakeModelServer(slow_players(0.05)) as a:
        await b.start()
        argv = ["--input", str(tasks), "--output", str(out), "--concurrency", "4", "--quiet"]
        collecting = asyncio.create_task(run_collect(*argv, *endpoint_args(a.base_url, b.base_url)))
        while len(b.requests) < 6:
            await asyncio.sleep(0.01)
        await b.close()  # replica b goes away in the middle of the run
        b_requests_at_death = len(b.requests)
        assert await collecting == 0
        assert Counter(r["status"] for r in records(out)) == {"completed": 16}, "no episode was lost with b"
        assert len(b.requests) == b_requests_at_death
        moved = [r for r in records(out) if servers_of(r, a, b) == [a, b]]
        assert moved, "episodes that were on b finished on a"
    replicas = orjson.loads(metrics_path(out).read_bytes())["replicas"]["policy"]
    assert replicas[b.base_url]["times_taken_out"] >= 1 and replicas[b.base_url]["available"] is False
    assert replicas[a.base_url]["episodes"] == 16


async def test_ctrl_c_ends_in_flight_episodes_as_interrupted_and_prints_the_resume_command(tmp_path: Path) -> None:
    # 16 episodes of ~2.6 s at concurrency 4: several seconds of work are still in flight at the signal.
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(16)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(slow_players(0.2), record=False) as server:
        argv = ["collect", "--input", str(tasks), "--output", str(out), "--concurrency", "4", "--quiet"]
        argv += endpoint_args(server.base_url)
        proc = await asyncio.create_subprocess_exec(*SPARRING, *argv, stderr=asyncio.subprocess.PIPE)
        while not out.exists() or len(records(out)) < 2:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 130
        written = records(out)
        interrupted = [r for r in written if r["stop_reason"] == "interrupted"]
        assert interrupted and all(r["status"] == "aborted" and r["reward"] is None for r in interrupted)
        assert max(pairs(out).values()) == 1
        assert "Resume with:" in err.decode() and "--resume" in err.decode().split("Resume with:")[1]
        assert not failures_path(out).exists(), "an interruption is not a failure"

        resume = [*argv, "--resume"]
        proc = await asyncio.create_subprocess_exec(*SPARRING, *resume, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
    assert f"{len(interrupted)} interrupted" in err.decode()
    assert pairs(out) == Counter({(t, 0): 1 for t in range(16)})
    assert {r["status"] for r in records(out)} == {"completed"}


async def test_kill_9_in_the_middle_then_resume_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(12)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(slow_players(0.05), record=False) as server:
        argv = ["collect", "--input", str(tasks), "--output", str(out), "--concurrency", "4", "--quiet"]
        argv += endpoint_args(server.base_url)
        proc = await asyncio.create_subprocess_exec(*SPARRING, *argv, stderr=asyncio.subprocess.DEVNULL)
        while not out.exists() or out.stat().st_size == 0 or len(out.read_bytes().splitlines()) < 3:
            await asyncio.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        before = out.read_bytes()
        assert 3 <= len(before.splitlines()) < 12
        proc = await asyncio.create_subprocess_exec(*SPARRING, *argv, "--resume", stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
    assert pairs(out) == Counter({(t, 0): 1 for t in range(12)})
    whole = before[: before.rfind(b"\n") + 1]
    assert out.read_bytes().startswith(whole), "the records written before the kill are untouched"
