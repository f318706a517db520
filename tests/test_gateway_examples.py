"""The examples, unchanged agents through the gateway: a LangGraph ReAct agent on ChatOpenAI, a plain SDK loop.

Against the scripted server (X from the centre; the examples' own tool answers as O), each game is
won, the gateway's tictactoe verifier replays it from the conversation, and the record passes the
ledger contract of our own episodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_harness import assert_exact_ledger, running_gateway

from sparring.testing import FakeModelServer
from sparring.testing.responders import tictactoe_players

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The examples directory importable, as it is when an example runs as a script."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import langgraph_agent
    import openai_sdk_agent

    return langgraph_agent, openai_sdk_agent


def assert_won_game(record: dict[str, Any], requests: list[dict[str, Any]]) -> None:
    assert record["status"] == "completed" and record["env"] == "tictactoe"
    assert (record["reward"], record["env_result"]["game_result"]) == (1.0, "win")
    assert record["env_result"]["board"] == ["X", "O", "X", "O", "X", None, "X", None, "O"]
    assert_exact_ledger(record)
    assert record["trajectory"]["prefix_mismatches"] == 0 and len(record["trajectory"]["branches"]) == 1
    assert record["num_policy_calls"] == len(requests) == len(record["trajectory"]["calls"])
    assert all(r["body"]["return_token_ids"] and r["body"]["logprobs"] for r in requests)


@pytest.mark.parametrize("stream", [False, True])
async def test_langgraph_react_agent_on_chatopenai_plays_through_the_gateway(examples: Any, stream: bool) -> None:
    langgraph_agent, _ = examples
    async with FakeModelServer(tictactoe_players()) as fake:
        with running_gateway([fake.base_url], policy_model="policy") as gw:
            record = await langgraph_agent.play(gw.url, stream=stream)
        assert_won_game(record, fake.requests)
    calls = [m for m in record["messages"] if m.get("tool_calls")]
    assert [m["tool_calls"][0]["function"]["name"] for m in calls] == ["make_move"] * 4
    assert [m["actor"] for m in record["messages"][:2]] == ["env", "user"]


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_agent_plays_through_the_gateway_with_auth(examples: Any, stream: bool) -> None:
    _, openai_sdk_agent = examples
    async with FakeModelServer(tictactoe_players()) as fake:
        with running_gateway([fake.base_url], policy_model="policy", api_key="k") as gw:
            record = await openai_sdk_agent.play(gw.url, api_key="k", stream=stream)
        assert_won_game(record, fake.requests)
