"""`sparring verify` on NeMo Gym-shaped calendar rollouts and sparring records; `sparring tasks`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from sparring.core.settings import EpisodeSettings
from sparring.core.task import parse_task
from sparring.engine.engine import Engine
from sparring.engine.verify import rescore_lines
from sparring.envs.calendar import Calendar
from sparring.envs.calendar.generator import generate_tasks
from sparring.testing import FakeModelServer
from sparring.testing.responders import calendar_players

WINDOW = {"min_time": "10am", "max_time": "4pm"}
EXPECTED = {
    "1": {"event_id": 1, "event_name": "Standup", "duration": 30, "constraint": "at 10am", **WINDOW},
    "2": {"event_id": 2, "event_name": "Review", "duration": 60, "constraint": "after 1pm", **WINDOW},
}


def reply(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "id": "m", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


def calendar_text(review_start: str) -> str:
    events = [
        {"event_id": 1, "event_name": "Standup", "start_time": "10am", "duration": 30},
        {"event_id": 2, "event_name": "Review", "start_time": review_start, "duration": 60},
    ]
    return "Updated calendar:\n" + json.dumps(events)


def rollout(output: list[dict[str, Any]], reward: float | None) -> dict[str, Any]:
    """A NeMo Gym calendar rollout: the row (input, exp_cal_state), its response, and its reward."""
    row: dict[str, Any] = {
        "responses_create_params": {
            "input": [
                {"role": "system", "content": "You schedule events and print the calendar as JSON."},
                {"role": "user", "content": "Add a 30 minute standup at 10am and a one-hour review after 1pm."},
            ]
        },
        "exp_cal_state": EXPECTED,
        "response": {"id": "resp_1", "object": "response", "output": output},
    }
    if reward is not None:
        row["reward"] = reward
    return row


ROWS = [
    rollout([reply(calendar_text("2pm"))], 1.0),  # correct
    rollout([reply(calendar_text("11am"))], 0.0),  # review before 1pm: constraint
    rollout([reply(calendar_text("2pm")), {"type": "reasoning", "summary": []}], 0.0),  # ended thinking
    rollout([reply(calendar_text("3:30pm"))], 1.0),  # ends 4:30pm: outside the window; the row's reward is wrong
    rollout([], None),  # said nothing
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def sparring(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparring.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_json_gives_one_object_per_row_in_order_and_compares_rewards(tmp_path: Path) -> None:
    result = sparring("verify", "--env", "calendar", "--input", str(write_jsonl(tmp_path / "r.jsonl", ROWS)), "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [r["reason"] for r in rows] == [
        "pass",
        "constraint_violated",
        "no_json_list",
        "constraint_violated",
        "no_json_list",
    ]
    assert rows[1]["components"]["constraints"] == 0.5 and rows[1]["components"]["windows"] == 1.0
    assert rows[3]["components"]["windows"] == 0.5
    assert [r.get("agrees") for r in rows] == [True, True, True, False, None]


def test_verify_prints_rows_and_a_summary(tmp_path: Path) -> None:
    result = sparring("verify", "--env", "calendar", "--input", str(write_jsonl(tmp_path / "r.jsonl", ROWS)))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("line 1: reward 1  format=1 events=1") and lines[0].endswith("agrees")
    assert "DIFFERS" in lines[3]
    assert (
        lines[-1] == "5 of 5 rows scored; mean reward 0.200, reward 1 on 1; agrees with the rows' own reward on 3 of 4"
    )


def test_bad_rows_are_reported_with_their_line_and_the_others_scored(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    no_expectation = {k: v for k, v in ROWS[0].items() if k != "exp_cal_state"}
    path.write_bytes(orjson.dumps(ROWS[0]) + b"\n{not json\n\n" + orjson.dumps(no_expectation) + b"\n[1]\n")
    result = sparring("verify", "--env", "calendar", "--input", str(path), "--json")
    assert result.returncode == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["reward"] == 1.0
    assert rows[1]["line"] == 2 and rows[1]["error"].startswith(f"{path}:2: not valid JSON")
    assert rows[2]["line"] == 4 and "env_seed.exp_cal_state: missing" in rows[2]["error"]
    assert rows[3]["line"] == 5 and "must be a JSON object" in rows[3]["error"]
    missing = sparring("verify", "--env", "calendar", "--input", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


async def test_sparring_records_rescore_to_their_own_reward_given_their_tasks(tmp_path: Path) -> None:
    tasks = [*generate_tasks(2, 3, tools=True), *generate_tasks(1, 4)]
    async with FakeModelServer(calendar_players()) as models:
        config = EpisodeSettings(
            policy_base_urls=[models.base_url], user_base_urls=[models.base_url], **Calendar.settings
        )
        engine = Engine(config, env="calendar")
        records = [await engine.play(parse_task(task), task_index=i) for i, task in enumerate(tasks)]
        await engine.aclose()
    assert all(r["reward"] is not None for r in records)
    lines = [orjson.dumps(r) for r in records]
    by_index = {i: parse_task(t) for i, t in enumerate(tasks)}
    results = await rescore_lines("calendar", "records.jsonl", lines, by_index, None)
    assert [r["reward"] for r in results] == [r["reward"] for r in records]
    assert [r["components"] for r in results] == [r["reward_components"] for r in records]
    without = await rescore_lines("calendar", "records.jsonl", lines[:1], None, None)
    assert "pass --tasks FILE" in without[0]["error"]


def test_tasks_command_writes_seeded_tasks(tmp_path: Path) -> None:
    first = sparring("tasks", "calendar", "--n", "500", "--seed", "1", "--output", str(tmp_path / "a.jsonl"))
    assert first.returncode == 0 and "wrote 500 calendar tasks" in first.stderr
    again = sparring("tasks", "calendar", "--n", "500", "--seed", "1")
    assert (tmp_path / "a.jsonl").read_text() == again.stdout
    assert len(again.stdout.splitlines()) == 500
    bad = sparring("tasks", "calendar", "--max-events", "30")
    assert bad.returncode == 2 and "max_events <= 10" in bad.stderr
