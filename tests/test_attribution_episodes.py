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
from sparring.core.attribution import AttributionRules, at, attribute, reason
from sparring.core.task import parse_task
from sparring.envs.base import Environment
from sparring.envs.calendar import Calendar
from sparring.envs.support_desk import SupportDesk
from sparring.envs.support_desk.env import GREETING, STOP_TOKEN
from sparring.envs.tictactoe import TicTacToe
from sparring.testing import Call, Fail, FakeModelServer, Say, Script
from sparring.testing.responders import calendar_players, support_desk_players, tictactoe_players
from sparring.tools.specs import ToolResult

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


async def test_re_attributing_a_record_from_its_fields_gives_its_own_attribution(play: Play) -> None:
    cases = [
        (SupportDesk(), support_desk_players("sd-01"), {"env_seed": {"task_id": "sd-01"}}),
        (SupportDesk(), {"policy": Script([Say("Hi")]), "user": Script([Say(GREETING), Say(GREETING)])}, {}),
        (TicTacToe(), tictactoe_players(), {}),
        (Calendar(), calendar_players(shift=360), {}),
    ]
    for env, responders, task in cases:
        record = await play(env, responders, task)
        rules = env.attribution_rules(parse_task(task), None)
        assert attribute(record, stop_tokens=[STOP_TOKEN], rules=rules) == record["attribution"], env.name


class FlakyDesk(SupportDesk):
    """A desk whose order lookup fails on its own (an internal error it reports as a result)."""

    async def call_tool(self, state: dict[str, Any], actor: Any, name: str, arguments: dict[str, Any]) -> ToolResult:
        if name == "get_order_details":
            return ToolResult(content='{"error": "order service down"}', state=state, is_error=True, fault="tool")
        return await super().call_tool(state, actor, name, arguments)


async def test_a_tool_that_fails_on_its_own_is_blamed_not_the_policy(play: Play) -> None:
    policy = Script(
        [
            Call("find_user_id_by_email", {"email": "mia@example.com"}),  # refused: the caller's fault
            Call("get_order_details", {"order_id": "#W1001"}),
            Say("Sorry, I cannot see your order right now."),
        ]
    )
    user = Script([Say("Please cancel my order #W1001."), Say(f"Okay, bye. {STOP_TOKEN}")])
    record = await play(FlakyDesk(), {"policy": policy, "user": user}, {})
    tools = [m for m in record["messages"] if m["role"] == "tool"]
    assert [(m["status"], m.get("fault")) for m in tools] == [("error", "caller"), ("error", "tool")]
    attribution = record["attribution"]
    assert attribution["label"] == "tool"
    assert [(r["check"], r["actor"], r["severity"]) for r in attribution["reasons"]] == [
        ("tool_failure", "tool", "fault"),
        ("policy_tool_errors", "agent", "note"),
    ]


class BrokenCheckDesk(SupportDesk):
    def attribution_rules(self, task: dict[str, Any], state: Any) -> AttributionRules:
        def broken(episode: Any) -> list[Any]:
            raise KeyError("moves")

        return AttributionRules(checks=(broken,))


async def test_a_broken_environment_check_labels_env_and_keeps_the_episode(play: Play) -> None:
    record = await play(BrokenCheckDesk(), support_desk_players("sd-01"), {"env_seed": {"task_id": "sd-01"}})
    assert (record["status"], record["reward"], record["error"]) == ("completed", 1.0, None)
    (found,) = record["attribution"]["reasons"]
    assert record["attribution"]["label"] == "env"
    assert (found["check"], found["actor"]) == ("attribution_error", "env")
    assert "raised KeyError" in found["detail"] and "broken" in found["detail"]


async def test_episodes_that_never_ran_or_were_aborted_are_the_environments(play: Play) -> None:
    engine = Engine(
        EpisodeSettings(policy_base_urls=["http://127.0.0.1:9/v1"], user_base_urls=["http://127.0.0.1:9/v1"])
    )
    record = await engine.play({"env": "no-such-env"})
    await engine.aclose()
    assert (record["status"], record["stop_reason"]) == ("aborted", "invalid_task")
    assert record["attribution"]["label"] == "env"
    assert record["attribution"]["reasons"][0]["detail"].startswith("aborted (invalid_task): UsageError: ")

    record = await play(TicTacToe(), {"policy": Fail(400), "user": tictactoe_players()["user"]}, {})
    assert (record["status"], record["attribution"]["label"]) == ("aborted", "env")


async def test_a_calendar_user_that_misstates_a_request_is_blamed_where_it_did(play: Play) -> None:
    user = Script(
        [
            Say("Please add event 1, Team sync, for 60 minutes, at 10am."),
            Say("Lunch with Sam, please."),
            Say("Please add event 3, Gym, for 90 minutes, after 2pm."),
            Say(STOP_TOKEN),
        ]
    )
    record = await play(Calendar(), {"policy": calendar_players()["policy"], "user": user}, {})
    assert record["reward"] < 1.0
    (found,) = [r for r in record["attribution"]["reasons"] if r["severity"] == "fault"]
    assert record["attribution"]["label"] == "user" and found["check"] == "request_misstated"
    assert record["user_messages"][found["where"]["index"]]["content"] == "Lunch with Sam, please."


async def test_o_repeating_a_taken_cell_is_noted_and_the_game_stays_the_policys(play: Play) -> None:
    o_player = tictactoe_players()["user"]

    def o_tries_the_centre_twice(request: Any) -> Any:
        return Call("make_move", {"position": 4}) if request.call_index < 2 else o_player(request)

    record = await play(TicTacToe(), {"policy": tictactoe_players()["policy"], "user": o_tries_the_centre_twice}, {})
    attribution = record["attribution"]
    assert attribution["label"] == ("none" if record["reward"] == 1.0 else "agent")
    notes = {r["check"]: r for r in attribution["reasons"]}
    assert notes["user_taken_cells"]["detail"] == "O tried 2 taken cell(s) [4, 4], 1 of them again after being refused"
    assert {r["severity"] for r in attribution["reasons"]} == {"note"}
