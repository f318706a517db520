"""The gateway in front of the real vLLM (CPU build, default model): the examples' agents, unchanged.

The LangGraph ReAct agent on ChatOpenAI (tool choice `required`: vLLM's constrained decoding makes
each step a `make_move` call) and the plain openai SDK loop, streaming with `tool_choice: auto` (the
small model often writes its call as bare JSON text; the agent sees exactly what vLLM returned).
Whatever the model plays, each record must pass the ledger contract of our own episodes: the
loss-mask sum equals the tokens vLLM says it sampled, and every sampled token has its logprob.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sparring.core.ledger import check_invariants
from sparring.models.local import ServerRecord

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vllm


def check_real_record(record: dict[str, Any]) -> None:
    """Exact token data from vLLM: sound segments, one trained token per sampled token, a logprob for each."""
    trajectory = record["trajectory"]
    assert record["status"] in ("completed", "truncated") and record["error"] is None
    assert record["unrecorded_calls"] == []
    assert check_invariants(trajectory) == []
    trained = sum(sum(segment["loss_mask"]) for segment in trajectory["segments"])
    assert trained == record["usage"]["policy"]["completion_tokens"] > 0
    assert trained == sum(call["completion_len"] for call in trajectory["calls"])
    for segment in trajectory["segments"]:
        sampled = [lp for lp, mask in zip(segment["logprobs"], segment["loss_mask"], strict=True) if mask]
        assert all(math.isfinite(lp) and lp <= 0 for lp in sampled)
    assert len(trajectory["segments"]) == trajectory["prefix_mismatches"] + len(trajectory["branches"])
    assert record["num_policy_calls"] == len(trajectory["calls"])


@pytest.fixture
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples and the gateway test helpers importable, as when an example runs as a script."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))


async def play_both(base_url: str, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One game per example agent through one gateway in front of `base_url`."""
    import langgraph_agent
    import openai_sdk_agent
    from gateway_harness import running_gateway

    with running_gateway([base_url], policy_model=model, policy_max_tokens=64, request_timeout_s=300.0) as gw:
        react = await langgraph_agent.play(gw.url, tool_choice="required", turns=2, steps_per_turn=3)
        sdk = await openai_sdk_agent.play(gw.url, max_steps=3, tool_choice="auto", stream=True)
    return react, sdk


async def test_example_agents_through_the_gateway_on_real_vllm(vllm_server: ServerRecord, importable: None) -> None:
    react, sdk = await play_both(vllm_server.base_url, vllm_server.model)
    for record in (react, sdk):
        check_real_record(record)
        assert record["env"] == "tictactoe" and record["reward"] in (0.0, 0.5, 1.0)
    # with `required`, every step of the ReAct agent was a make_move call parsed by vLLM
    moves = [m for m in react["messages"] if m["actor"] == "policy"]
    assert moves and all(m["tool_calls"][0]["function"]["name"] == "make_move" for m in moves)
    assert all(call["stream"] for call in sdk["trajectory"]["calls"])
