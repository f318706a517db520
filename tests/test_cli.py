"""The `sparring` command as a user runs it: a real process against the scripted server in another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparring.cli import main, make_parser
from sparring.cli.options import settings_from_args
from sparring.testing import FakeModelProcess


@pytest.fixture(scope="module")
def server() -> Iterator[FakeModelProcess]:
    with FakeModelProcess("tictactoe") as process:
        yield process


def sparring(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "SPARRING_STATE_DIR": "/nonexistent-sparring-state", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sparring.cli", *args], capture_output=True, text=True, timeout=120, env=full_env
    )


def test_run_prints_a_transcript_and_the_record_last(server: FakeModelProcess, tmp_path: Path) -> None:
    out = tmp_path / "rollouts.jsonl"
    result = sparring(
        "run", "--policy-base-url", server.base_url, "--user-base-url", server.base_url, "--json", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
    transcript = "\n".join(lines[:-1])
    assert "policy calls make_move" in transcript and "user calls make_move" in transcript
    assert "X | O" in transcript, "the board is drawn"
    assert "reward 1.0" in transcript
    assert json.loads(out.read_text()) == record
    for field in (
        "id",
        "task_index",
        "repeat_index",
        "env",
        "status",
        "stop_reason",
        "reward",
        "reward_components",
        "env_result",
        "num_turns",
        "num_policy_calls",
        "num_user_calls",
        "messages",
        "trajectory",
        "usage",
        "timing",
        "error",
    ):
        assert field in record


def test_endpoints_from_environment_variables_and_task_files(server: FakeModelProcess, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "a"}\n{"id": "b", "limits": {"max_turns": 1}}\n')
    env = {"SPARRING_POLICY_BASE_URL": server.base_url, "SPARRING_USER_BASE_URL": server.base_url}
    result = sparring("run", "--input", str(tasks), "--index", "1", "--json", "--quiet", env=env)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["task_id"], record["task_index"], record["stop_reason"]) == ("b", 1, "max_turns")


def test_an_aborted_episode_still_prints_its_record(tmp_path: Path) -> None:
    result = sparring(
        "run",
        "--policy-base-url",
        "http://127.0.0.1:9/v1",
        "--user-base-url",
        "http://127.0.0.1:9/v1",
        "--json",
        "--timeout",
        "2",
    )
    assert result.returncode == 1
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
    assert "127.0.0.1:9" in record["error"]["message"]


def test_bad_task_input_names_file_line_and_field(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "a"}\n{"env_seed": {}, "limits": {"max_turns": "many"}}\n')
    result = sparring(
        "run",
        "--input",
        str(tasks),
        "--index",
        "1",
        "--policy-base-url",
        "http://x/v1",
        "--user-base-url",
        "http://x/v1",
    )
    assert result.returncode == 2
    assert f"{tasks}:2: field limits.max_turns" in result.stderr
    result = sparring("run", "--task", "{oops", "--policy-base-url", "http://x/v1", "--user-base-url", "http://x/v1")
    assert result.returncode == 2 and "--task: not valid JSON" in result.stderr


def test_no_server_configured_says_what_to_do() -> None:
    result = sparring("run")
    assert result.returncode == 2
    assert "no policy model server" in result.stderr and "sparring models up" in result.stderr


def test_graph_prints_every_node_and_edge_as_mermaid() -> None:
    result = sparring("graph")
    assert result.returncode == 0
    for node in ("seed", "policy", "policy_tools", "user", "user_tools", "verify"):
        assert f"\t{node}(" in result.stdout
    for edge in (
        "policy -.-> policy_tools",
        "user -. &nbsp;hand over&nbsp; .-> policy",
        "user_tools -. &nbsp;hand over",
    ):
        assert edge in result.stdout


UNREACHABLE_OF = {role: [f"--{role}-base-url", "http://127.0.0.1:9/v1"] for role in ("policy", "user")}
UNREACHABLE = [*UNREACHABLE_OF["policy"], *UNREACHABLE_OF["user"]]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-turns", "0"], "--max-turns: must be at least 1, got 0"),
        (["--max-turns", "-3"], "--max-turns: must be at least 1, got -3"),
        (["--max-steps-per-turn", "0"], "--max-steps-per-turn: must be at least 1, got 0"),
        (["--max-user-steps-per-turn", "-1"], "--max-user-steps-per-turn: must be at least 1, got -1"),
        (["--policy-max-tokens", "0"], "--policy-max-tokens: must be at least 1, got 0"),
        (["--timeout", "-1"], "--timeout: must be more than 0, got -1.0"),
        (["--timeout", "0"], "--timeout: must be more than 0, got 0.0"),
        (["--timeout", "nan"], "--timeout: must be a finite number, got nan"),
        (["--timeout", "inf"], "--timeout: must be a finite number, got inf"),
        (["--policy-base-url", "a,b"], "--policy-base-url: must be an http(s) URL, got 'a'"),
        (["--user-base-url", "127.0.0.1:8000"], "--user-base-url: must be an http(s) URL, got '127.0.0.1:8000'"),
        (["--env-url", "file:///etc/passwd"], "--env-url: must be an http(s) URL, got 'file:///etc/passwd'"),
        (["--policy-model", ""], "--policy-model: must not be empty"),
        (["--policy-base-url", ","], "--policy-base-url: needs at least one URL"),
        (["--env-url", ""], "--env-url: must be an http(s) URL, got ''"),
    ],
)
@pytest.mark.parametrize("command", ["run", "collect"])
def test_every_episode_flag_is_checked_by_the_settings_rules_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, flags: list[str], message: str
) -> None:
    """Issue 15, 10: `--max-turns 0` truncated every episode with exit 0, `--timeout -1` meant no time-out."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("{}\n")
    io = ["--input", str(tasks)] + (["--output", str(tmp_path / "out.jsonl")] if command == "collect" else [])
    endpoints = [a for role in ("policy", "user") if f"--{role}-base-url" not in flags for a in UNREACHABLE_OF[role]]
    assert main([command, *io, *endpoints, *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"sparring: error: {message}\n"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grace", "-1"], "grace_s (--grace) must be a number of seconds, at least 0, got -1.0"),
        (["--grace", "nan"], "grace_s (--grace) must be a number of seconds, at least 0, got nan"),
        (["--pass-threshold", "nan"], "pass_threshold (--pass-threshold) must be a finite number, got nan"),
        (["--repeats", "0"], "repeats (--repeats) must be at least 1"),
        (["--concurrency", "-2"], "concurrency (--concurrency) must be at least 1"),
        (["--limit", "-1"], "limit (--limit) must not be negative"),
        (["--ray", "--workers", "0"], "ray.workers (--workers) must be at least 1"),
    ],
)
def test_every_collect_flag_is_checked_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("{}\n")
    out = tmp_path / "out.jsonl"
    assert main(["collect", "--input", str(tasks), "--output", str(out), *UNREACHABLE, *flags]) == 2
    assert capsys.readouterr().err == f"sparring: error: {message}\n"
    assert not out.exists()


def test_comma_separated_base_urls_are_replicas_as_in_the_variables() -> None:
    args = make_parser().parse_args(
        ["run", "--policy-base-url", "http://a:1/v1, http://b:2/v1", "--user-base-url", "http://u/v1"]
    )
    settings = settings_from_args(args, "tictactoe")
    assert settings.policy_base_urls == ["http://a:1/v1", "http://b:2/v1"]


def test_run_checks_its_output_before_playing_the_episode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15, 4: `run --output <a directory>` played the whole episode, then lost its record in a traceback."""
    (tmp_path / "file").write_text("")
    for output, problem in (
        (tmp_path, f"--output {tmp_path}: is a directory; name a file"),
        (tmp_path / "file" / "out.jsonl", f"the folder {tmp_path / 'file'} is not a directory"),
        (Path("/proc/out.jsonl"), "--output /proc/out.jsonl: cannot write there"),
    ):
        assert main(["run", "--output", str(output), *UNREACHABLE, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sparring: error: --output ") and problem in err and len(err.splitlines()) == 1, err


def test_run_refuses_a_task_with_malformed_tool_calls_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15, 11: `messages[].tool_calls: [{"bogus": 1}]` ended aborted/internal_error with KeyError: 'id'."""
    task = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"bogus": 1}]}]}
    assert main(["run", "--task", json.dumps(task), *UNREACHABLE]) == 2
    assert "--task: field messages.1.tool_calls.0.id: Field required" in capsys.readouterr().err


def test_the_parser_loads_no_web_stack() -> None:
    """`sparring --help` (and every command's parser) reads its defaults from light modules: no FastAPI, no app."""
    heavy = ("fastapi", "starlette", "uvicorn", "aiohttp", "sparring.server.app", "sparring.gateway.app")
    probe = (
        "import sys; from sparring.cli.main import make_parser; make_parser(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == ""
