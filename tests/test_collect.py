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

from sparring.cli import main, make_parser
from sparring.cli.collect import collect_command
from sparring.cli.options import UsageError
from sparring.core.errors import InputError
from sparring.core.settings import EpisodeSettings
from sparring.core.task import TaskError, parse_task
from sparring.engine.collect import CollectSpec, SilentProgress, collect
from sparring.engine.output import failures_path, manifest_path, metrics_path
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
        while not out.exists() or out.read_bytes().count(b"\n") < 2:  # whole lines: a write may be under way
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


def unwritable_outputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """Flags naming an output that cannot be written, and the start of the one-line error each must give."""
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "good.jsonl").write_text("")
    folder = str(tmp_path / "a-folder")
    return [
        (["--output", folder], f"output (--output) {folder}: is a directory"),
        (["--output", folder, "--resume"], f"output (--output) {folder}: is a directory"),
        (["--output", "/proc/x.jsonl"], "output (--output) /proc/x.jsonl: cannot write there"),
        (["--output", f"{tmp_path}/good.jsonl/out.jsonl"], f"the folder {tmp_path}/good.jsonl is not a directory"),
        (["--output", f"{tmp_path}/nowhere/out.jsonl"], f"the folder {tmp_path}/nowhere does not exist"),
        (
            ["--output", f"{tmp_path}/out.jsonl", "--failures", "/proc/f.jsonl"],
            "failures (--failures) /proc/f.jsonl: cannot write there",
        ),
    ]


@pytest.mark.parametrize("case", range(6))
def test_an_output_that_cannot_be_written_fails_in_one_line_before_any_episode(
    tmp_path: Path, capsys, case: int
) -> None:
    """Issue 15, 4: these ended in tracebacks, --failures /proc/f.jsonl after 121 of 200 records."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{}])
    flags, message = unwritable_outputs(tmp_path)[case]
    code = main(["collect", "--input", str(tasks), *flags, *endpoint_args("http://127.0.0.1:9/v1")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sparring: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.jsonl").exists(), "no episode ran, nothing was written"


class _Started(SilentProgress):
    """Sets an event when the collection starts its episodes (it holds its locks by then)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    def start(self, total: int) -> None:
        self.started.set()


async def test_a_second_collector_on_the_same_output_stops_at_once_naming_the_first(tmp_path: Path) -> None:
    """Issue 15, 1: two collects on one output wrote every record twice, and the file then refused --resume."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(4)])
    out, failures = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    players, gate = tictactoe_players(), asyncio.Event()

    async def held_policy(request: ModelRequest) -> Any:
        await gate.wait()  # the first collector's episodes wait here until the others were turned away
        return players["policy"](request)

    progress = _Started()
    async with (
        FakeModelServer({"policy": held_policy, "user": players["user"]}) as held,
        FakeModelServer(tictactoe_players()) as free,
    ):
        settings = EpisodeSettings(policy_base_urls=[held.base_url], user_base_urls=[held.base_url])
        spec = CollectSpec(input=tasks, output=out, failures=failures, settings=settings, repeats=2, concurrency=4)
        first = asyncio.create_task(collect(spec, progress=progress))
        await progress.started.wait()
        others = [
            ["--output", str(out)],
            ["--output", str(out), "--resume"],
            ["--output", str(out), "--resume", "--ray", "--workers", "1"],
            ["--output", str(tmp_path / "other.jsonl"), "--failures", str(failures)],
        ]
        for flags in others:
            argv = ["collect", "--input", str(tasks), *flags, "--repeats", "2", *endpoint_args(free.base_url)]
            proc = await asyncio.create_subprocess_exec(*SPARRING, *argv, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 2, err.decode()
            assert "is being written by another process (pid " + str(os.getpid()) in err.decode()
        assert not free.requests, "no second collector played an episode"
        gate.set()
        result = await first
    assert result.exit_code == 0
    assert pairs(out) == Counter({(t, r): 1 for t in range(4) for r in range(2)})
    assert not list(tmp_path.glob(".*.lock")), "the locks are gone with the run"


async def test_resume_refuses_an_output_made_from_other_tasks(tmp_path: Path) -> None:
    """Issue 15, 3: an output of A.jsonl resumed with B.jsonl kept A's records, ran B's rest, mixed both."""
    a = write_tasks(tmp_path / "A.jsonl", [{"id": f"a{i}"} for i in range(3)])
    b = write_tasks(tmp_path / "B.jsonl", [{"id": f"b{i}"} for i in range(5)])
    edited = write_tasks(tmp_path / "A2.jsonl", [{"id": "a0"}, {"id": "a1", "limits": {"max_turns": 1}}, {"id": "a2"}])
    shorter = write_tasks(tmp_path / "A3.jsonl", [{"id": "a0"}, {"id": "a1"}])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        first = ["--input", str(a), "--output", str(out), "--quiet", *endpoint_args(server.base_url)]
        assert await run_collect(*first) == 0
        before = out.read_bytes()
        for other, problem in (
            (b, r"3 of its 3 tasks differ \(task index 0, 1, 2\)"),
            (edited, r"1 of its 3 tasks differ \(task index 1\)"),
            (shorter, r"the input has 2 tasks, it was made from 3"),
        ):
            for flags in (["--resume"], ["--retry-failed"], ["--resume", "--force"]):  # never forced
                argv = ["--input", str(other), "--output", str(out), *flags, "--quiet"]
                with pytest.raises(InputError, match=rf"was made from other tasks .*A\.jsonl.*: {problem}"):
                    await run_collect(*argv, *endpoint_args(server.base_url))
        with pytest.raises(InputError, match="environment 'tictactoe' for tasks that name none, not 'calendar'"):
            await run_collect(*first, "--resume", "--env", "calendar")
    assert out.read_bytes() == before, "a refused resume changes nothing"


async def test_resume_with_other_settings_needs_force_and_says_what_differs(tmp_path: Path, capsys) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(2)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as a, FakeModelServer(tictactoe_players()) as b:
        common = ["--input", str(tasks), "--output", str(out), "--quiet"]
        assert await run_collect(*common, "--limit", "1", *endpoint_args(a.base_url)) == 0
        manifest = orjson.loads(manifest_path(out).read_bytes())
        assert manifest["input"] == str(tasks) and len(manifest["tasks"]) == 2
        assert manifest["settings"]["tictactoe"]["max_turns"] == 5 and "policy_base_urls" not in str(manifest)
        # Other URLs (replicas), time-outs, concurrency and limits of the run are not results: no refusal.
        relaxed = ["--concurrency", "3", "--limit", "2", *endpoint_args(b.base_url), "--timeout", "45"]
        assert await run_collect(*common, "--resume", *relaxed) == 0
        assert len(records(out)) == 2
        changed = ["--repeats", "2", "--max-turns", "3", "--policy-max-tokens", "300", *endpoint_args(a.base_url)]
        with pytest.raises(
            InputError,
            match=r"made with other settings: tictactoe: policy_max_tokens was 512, now 300; tictactoe: max_turns "
            r"was 5, now 3\. Resume with the settings it was made with, or pass --force if this change is deliberate",
        ):
            await run_collect(*common, "--resume", *changed)
        assert await run_collect(*common, "--resume", "--force", *changed) == 0
    assert "settings changed (--force): tictactoe: policy_max_tokens was 512, now 300;" in capsys.readouterr().err
    assert pairs(out) == Counter({(t, r): 1 for t in range(2) for r in range(2)})
    manifest = orjson.loads(manifest_path(out).read_bytes())
    assert manifest["settings"]["tictactoe"]["max_turns"] == 3
    assert [e["settings"]["tictactoe"]["max_turns"] for e in manifest["earlier"]] == [5]


async def test_an_output_without_a_manifest_resumes_only_with_force(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{} for _ in range(2)])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        common = ["--input", str(tasks), "--output", str(out), "--quiet", *endpoint_args(server.base_url)]
        assert await run_collect(*common, "--limit", "1") == 0
        manifest_path(out).unlink()  # an output written before manifests existed
        with pytest.raises(InputError, match=r"has no manifest .* resume with --force to adopt it"):
            await run_collect(*common, "--resume")
        assert await run_collect(*common, "--resume", "--force") == 0
        tasks.write_text(tasks.read_text() + "{}\n")  # tasks appended to the input run; the others are kept
        assert await run_collect(*common, "--resume") == 0
    assert pairs(out) == Counter({(0, 0): 1, (1, 0): 1, (2, 0): 1})
    assert len(orjson.loads(manifest_path(out).read_bytes())["tasks"]) == 3


async def test_a_task_with_malformed_tool_calls_is_skipped_naming_the_field(tmp_path: Path, capsys) -> None:
    """Issue 15, 11: `messages[].tool_calls: [{"bogus": 1}]` ended aborted/internal_error with KeyError: 'id'."""
    bogus = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"bogus": 1}]}]}
    tasks = write_tasks(tmp_path / "tasks.jsonl", [bogus, {}])
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        argv = ["--input", str(tasks), "--output", str(out), "--quiet", *endpoint_args(server.base_url)]
        assert await run_collect(*argv) == 1
    assert f"skipped {tasks}:1: field messages.1.tool_calls.0.id: Field required" in capsys.readouterr().err
    assert pairs(out) == Counter({(1, 0): 1})
