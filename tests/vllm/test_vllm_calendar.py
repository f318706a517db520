"""calendar episodes on the real default model (vLLM CPU): printed, tools and NeMo Gym-row forms reach a verdict."""

from __future__ import annotations

import asyncio

import pytest
from real_server import server_config

from sparring import Engine
from sparring.core.task import parse_task
from sparring.envs.calendar import Calendar
from sparring.envs.calendar.generator import generate_tasks
from sparring.models.local import ServerRecord

pytestmark = pytest.mark.vllm

NEMO_GYM_ROW = {
    "responses_create_params": {
        "input": [
            {"role": "system", "content": "You are a scheduling assistant. Print the whole calendar as a JSON list "
             'of {"event_id", "event_name", "start_time", "duration"} objects in every reply.'},
            {"role": "user", "content": "Event 1: a 30 minute standup at 10am. Event 2: a 60 minute review after 2pm."},
        ]
    },
    "exp_cal_state": {
        "1": {"event_id": 1, "event_name": "Standup", "duration": 30, "constraint": "at 10am",
              "min_time": "10am", "max_time": "4pm"},
        "2": {"event_id": 2, "event_name": "Review", "duration": 60, "constraint": "after 2pm",
              "min_time": "10am", "max_time": "4pm"},
    },
}  # fmt: skip


async def test_calendar_episodes_reach_a_verdict(vllm_server: ServerRecord) -> None:
    config = server_config(Calendar(), vllm_server, policy_max_tokens=256, user_max_tokens=96)
    engine = Engine(config, env="calendar")
    tasks = [
        generate_tasks(1, 1, min_events=2, max_events=2)[0],
        generate_tasks(1, 2, min_events=2, max_events=2, tools=True)[0],
        NEMO_GYM_ROW,
    ]
    try:
        records = await asyncio.gather(*(engine.play(parse_task(task)) for task in tasks))
    finally:
        await engine.aclose()
    for record in records:
        assert record["status"] in ("completed", "truncated"), record["error"]
        assert record["reward"] in (0.0, 1.0)
        assert set(record["reward_components"]) == {
            "format",
            "events",
            "durations",
            "windows",
            "constraints",
            "no_overlaps",
        }
        assert record["env_result"]["reason"] and record["num_policy_calls"] >= 1
        assert record["trajectory"]["prefix_mismatches"] == 0
        assert all("###STOP###" not in str(m["content"]) for m in record["messages"])
