"""support-desk episodes on the real default model (vLLM CPU): they run to a scored verdict."""

from __future__ import annotations

import asyncio

import pytest
from real_server import server_config

from sparring import Engine
from sparring.envs.support_desk import SupportDesk
from sparring.models.local import ServerRecord

pytestmark = pytest.mark.vllm

TASKS = ("sd-01", "sd-20")


async def test_support_desk_episodes_reach_a_verdict(vllm_server: ServerRecord) -> None:
    config = server_config(SupportDesk(), vllm_server, max_turns=4, user_max_tokens=96)
    engine = Engine(config, env="support-desk")
    try:
        records = await asyncio.gather(*(engine.play({"env_seed": {"task_id": t}}) for t in TASKS))
    finally:
        await engine.aclose()
    for record in records:
        assert record["status"] in ("completed", "truncated"), record["error"]
        assert record["reward"] in (0.0, 1.0)
        assert set(record["reward_components"]) == {"users", "orders", "transfer", "facts"}
        assert record["num_policy_calls"] >= 1 and record["num_user_calls"] >= 1
        assert record["trajectory"]["prefix_mismatches"] == 0
        assert all("###STOP###" not in str(m["content"]) for m in record["messages"])
