"""Studio's server on the real model: `langgraph dev` runs an episode in tito mode with the real tokenizer.

The scripted server's tokenizer loads without touching files, so only the real one shows whether the
graph does blocking work on `langgraph dev`'s event loop (it refuses that).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from test_studio import dev_server, new_thread, run  # noqa: F401  (dev_server is a fixture)

from sparring.models.local import ServerRecord

pytestmark = pytest.mark.vllm


async def test_studio_runs_a_tito_episode_on_the_real_model(dev_server: str, vllm_server: ServerRecord) -> None:  # noqa: F811
    context: dict[str, Any] = {
        "policy_base_urls": [vllm_server.base_url],
        "user_base_urls": [vllm_server.base_url],
        "policy_model": vllm_server.model,
        "user_model": vllm_server.model,
        "policy_tokenizer": vllm_server.model_path,
        "token_mode": "tito",
        "max_turns": 1,
    }
    async with httpx.AsyncClient(base_url=dev_server, timeout=600) as api:
        thread = await new_thread(api)
        state = await run(api, thread, {"assistant_id": "tictactoe", "input": {"task": {}}, "context": context})
    values = state["values"]
    assert values["error"] is None and values["status"] in ("completed", "truncated")
    assert values["num_policy_calls"] >= 1 and len(values["ledger"]) == values["num_policy_calls"]
    assert values["ledger"][0]["completion_ids"], "the sampled ids came back from vLLM"
