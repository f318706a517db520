"""Attribution on records the graph really writes: scripted episodes over loopback HTTP.

The checks read the record's shape (the user's flipped opening, the policy's replies joined into what
the user is shown, stop tokens kept in the user's view only); these episodes hold them to it. The
verdicts are the records' own `attribution` (the verify node's, with each environment's rules), and
re-attributing a record from its fields alone gives the same rule reasons.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sparring import Engine, EpisodeSettings
from sparring.core.attribution import at, reason
from sparring.envs.base import Environment
from sparring.envs.calendar import Calendar
from sparring.envs.support_desk import SupportDesk
from sparring.envs.support_desk.env import GREETING, STOP_TOKEN
from sparring.envs.tictactoe import TicTacToe
from sparring.testing import Call, FakeModelServer, Say, Script
from sparring.testing.responders import calendar_players, support_desk_players, tictactoe_players

Play = Callable[..., Any]


@pytest.fixture
async def play() -> AsyncIterator[Play]:
    """`await play(env, responders, task)`: one episode of `env` as `sparring run` plays it, on a scripted server."""
    opened: list[tuple[FakeModelServer, Engine]] = []

    async def one(env: Environment, responders: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        server = FakeModelServer(responders)
        await server.__aenter__()
        settings = EpisodeSettings(
            **env.settings,
            policy_base_urls=[server.base_url],
            user_base_urls=[server.base_url],
            request_timeout_s=5.0,
        )
        engine = Engine(settings, env=env.name, environments={env.name: env})
        opened.append((server, engine))
        return await engine.play(task)

    try:
        yield one
    finally:
        for server, engine in opened:
            await engine.aclose()
            await server.__aexit__(None, None, None)


async def test_a_by_the_book_desk_episode_is_clean(play: Play) -> None:
    record = await play(SupportDesk(), support_desk_players("sd-01"), {"env_seed": {"task_id": "sd-01"}})
    assert record["reward"] == 1.0
    assert record["attribution"] == {"label": "none", "reasons": [], "judge": None}


async def test_an_agent_that_keeps_the_refund_to_itself_is_blamed(play: Play) -> None:
    task = {"env_seed": {"task_id": "sd-06"}}
    record = await play(SupportDesk(), support_desk_players("sd-06", tell_facts=False), task)
    assert record["reward"] == 0.0
    assert record["attribution"] == {"label": "agent", "reasons": [], "judge": None}


async def test_a_customer_who_plays_the_agent(play: Play) -> None:
    """The default model's customer: it echoes the greeting, then answers the agent as an agent would."""
    user = Script([Say(GREETING), Say("Let me know if you have any more questions or if you need further assistance.")])
    policy = Script([Say("Hello! What can I do for you?"), Say("I'm here for your order questions.")])
    record = await play(SupportDesk(), {"policy": policy, "user": user}, {"limits": {"max_turns": 2}})
    verdict = record["attribution"]
    assert verdict["label"] == "user"
    found = [(r["check"], r["where"]) for r in verdict["reasons"]]
    assert found == [
        ("spoke_as_assistant", at("user_messages", 2)),
        ("spoke_as_assistant", at("user_messages", 4)),
        ("echoed_policy", at("user_messages", 2)),
    ]
    assert record["user_messages"][2]["content"] == GREETING
    assert record["user_messages"][1]["content"] == GREETING, "the greeting is what the user answered"


async def test_a_customer_who_writes_only_the_stop_token(play: Play) -> None:
    record = await play(SupportDesk(), {"policy": Script([]), "user": Script([Say(STOP_TOKEN)])}, {})
    assert (record["status"], record["stop_reason"]) == ("truncated", "user_empty")
    verdict = record["attribution"]
    assert verdict["label"] == "user"
    assert [r["check"] for r in verdict["reasons"]] == ["no_request", "user_silent"]


async def test_a_customer_who_stops_on_a_success_nobody_announced(play: Play) -> None:
    user = Script(
        [Say("Cancel order #W1001 please."), Say(f"Great, my order has been cancelled, thanks! {STOP_TOKEN}")]
    )
    policy = Script([Say("Could you give me your email?")])
    record = await play(SupportDesk(), {"policy": policy, "user": user}, {})
    assert (record["stop_reason"], record["reward"]) == ("user_stop", 0.0)
    verdict = record["attribution"]
    assert verdict["label"] == "user"
    assert [(r["check"], r["actor"], r["where"]) for r in verdict["reasons"]] == [
        ("false_success_claim", "user", at("user_messages", 4))
    ]


async def test_the_agents_bad_calls_are_a_note_and_the_failure_its_own(play: Play) -> None:
    policy = Script(
        [
            Call("cancel_pending_order", {"order_id": "#W1001", "reason": "no longer needed"}),
            Call("cancel_pending_order", {"order_id": "#W1001", "reason": "too expensive"}),
            Call("cancel_pending_order", '{"order_id": "#W1001"'),
            Call("find_user_id_by_email", {"email": "mia.garcia@example.com"}),
            Call("cancel_pending_order", {"order_id": "#W1001"}),
            Say("I could not cancel it, sorry."),
        ]
    )
    user = Script([Say("Cancel #W1001 please, my email is mia.garcia@example.com."), Say(f"Bye {STOP_TOKEN}")])
    record = await play(SupportDesk(), {"policy": policy, "user": user}, {})
    verdict = record["attribution"]
    assert verdict["label"] == "agent"
    first_error = next(i for i, m in enumerate(record["messages"]) if m["role"] == "tool")
    assert verdict["reasons"] == [
        reason(
            "policy_tool_errors",
            "agent",
            "4 tool call(s) of the policy refused: 3 with invalid arguments, 1 by the environment",
            at("messages", first_error),
            "note",
        )
    ]


async def test_scripted_tictactoe_players_are_clean(play: Play) -> None:
    record = await play(TicTacToe(), tictactoe_players(), {})
    assert record["status"] == "completed"
    verdict = record["attribution"]
    assert verdict["reasons"] == []
    assert verdict["label"] == ("none" if record["reward"] == 1.0 else "agent")


async def test_a_calendar_user_copying_its_shown_requests_is_clean(play: Play) -> None:
    record = await play(Calendar(), calendar_players(), {})
    assert record["reward"] == 1.0
    assert record["attribution"] == {"label": "none", "reasons": [], "judge": None}
