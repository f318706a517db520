"""The `sparring` command as a user runs it: a real process against the scripted server in another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
