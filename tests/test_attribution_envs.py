"""Environments' own attribution: their checks on crafted records that must and must not trigger them,
what their users may say word for word, and the base class's defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sparring.core.attribution import AttributionRules, at, attribute, reason
from sparring.envs.base import DEFAULT_JUDGE_PROMPT, Environment
from sparring.envs.calendar import Calendar
from sparring.envs.calendar.env import REQUESTS_PERSONA
from sparring.envs.support_desk import SupportDesk
from sparring.envs.support_desk.env import resolve_task
from sparring.envs.tictactoe import TicTacToe
from sparring.tools.specs import ToolResult

CALENDAR = Calendar()
REQUEST_1 = "Please add event 1, Team sync, for 60 minutes, at 10am."
REQUEST_2 = "Please add event 2, Lunch with Sam, for 45 minutes, between 12pm and 1:30pm."
REQUEST_3 = "Please add event 3, Gym, for 90 minutes, after 2pm."


def shown(request: str) -> str:
    return f"(Your next request: {request} Write it to the assistant now, in plain words.)"


def calendar_record(*turns: tuple[str, str], reward: float = 0.0) -> dict[str, Any]:
    """The user's view of a calendar episode: each turn, the policy's words and the next request shown, then the
    user's reply (which reaches the policy)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You schedule.", "actor": "env"}]
    user_messages: list[dict[str, Any]] = [{"role": "system", "content": REQUESTS_PERSONA}]
    for n, (request, reply) in enumerate(turns):
        policy = f"Done with request {n}." if n else ""
        if policy:
            messages.append({"role": "assistant", "content": policy, "actor": "policy"})
        user_messages.append({"role": "user", "content": "\n\n".join(filter(None, [policy, shown(request)]))})
        user_messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": reply, "actor": "user"})
    return {
        "status": "truncated",
        "stop_reason": "max_turns",
        "reward": reward,
        "messages": messages,
        "user_messages": user_messages,
    }


def calendar_faults(*turns: tuple[str, str]) -> list[tuple[str, Any]]:
    verdict = attribute(calendar_record(*turns), rules=CALENDAR.attribution_rules({}, None))
    return [(r["detail"], r["where"]) for r in verdict["reasons"] if r["check"] == "request_misstated"]


@pytest.mark.parametrize(
    ("request_text", "reply"),
    [
        (REQUEST_1, REQUEST_1),
        (REQUEST_1, "Event 1: team sync, one hour, at 10 a.m. please."),
        (REQUEST_1, "Can you put event 1 (Team sync) at 10:00am for an hour?"),
        (REQUEST_2, "Event 2, lunch with Sam, 45 min, somewhere between 12 and 1:30 pm."),
        (REQUEST_2, "Please schedule event 2 for 45 minutes between 12:00 and 13:30."),
        (REQUEST_3, "Add event 3: gym for 1.5 hours after 2pm. ###STOP###"),
        ("Please add event 4, Call mom, for 30 minutes, any time between 10am and 4pm.", "Event 4, call mom, 30 mins."),
    ],
)
def test_a_request_passed_on_in_other_words_is_no_fault(request_text: str, reply: str) -> None:
    assert calendar_faults((request_text, reply)) == []


@pytest.mark.parametrize(
    ("request_text", "reply", "missing"),
    [
        (REQUEST_2, "Add lunch with Sam please.", "event number, duration, time"),
        (REQUEST_1, "Please add event 1, Team sync, for 30 minutes, at 10am.", "duration"),
        (REQUEST_1, "Please add event 1, Team sync, for 60 minutes, at 11am.", "time"),
        (REQUEST_3, "Please add event 3, Gym, for 90 minutes, before 2pm.", "'after'"),
        (REQUEST_3, "###STOP###", "event number, duration, time"),
        (REQUEST_1, "How can I help you today?", "event number, duration, time"),
    ],
)
def test_a_request_misstated_or_left_out_is_the_users_fault(request_text: str, reply: str, missing: str) -> None:
    ((detail, where),) = calendar_faults((REQUEST_1, REQUEST_1), (request_text, reply))
    assert detail.startswith(f"the user's message left out or changed the {missing} of its request ")
    assert where == at("user_messages", 4)


def test_a_misstated_calendar_request_decides_the_label_and_a_nemo_gym_row_has_none_to_check() -> None:
    record = calendar_record((REQUEST_1, REQUEST_1), (REQUEST_2, "Lunch with Sam."))
    assert attribute(record, rules=CALENDAR.attribution_rules({}, None))["label"] == "user"
    assert attribute(record)["label"] == "agent", "no built-in check can see it"
    record["user_messages"][1]["content"] = record["user_messages"][3]["content"] = "Scheduled."
    assert attribute(record, rules=CALENDAR.attribution_rules({}, None))["label"] == "agent", "no request shown"


def o_move(position: int, result: str, *, status: str = "error", call: int = 0) -> list[dict[str, Any]]:
    call_id = f"user_{call}"
    arguments = json.dumps({"position": position})
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "make_move", "arguments": arguments}}
            ],
        },
        {"role": "tool", "content": result, "tool_call_id": call_id, "name": "make_move", "status": status},
    ]


BOARD = json.dumps({"board": ["X", None, None, None, "X", None, None, None, None], "next_mark": "O"})
ENV_REFUSES_4 = json.dumps({"board": [None] * 9, "error": "position 4 is already taken by X"})
ENUM_REFUSES_0 = "Error: make_move: arguments.position must be one of [1, 2, 3, 5, 6, 7, 8], got 0"


def tictactoe_record(user_steps: list[dict[str, Any]], reward: float, moves: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "status": "completed",
        "stop_reason": "env_done",
        "reward": reward,
        "env_result": {"moves": moves},
        "messages": [
            {"role": "system", "content": "You are X.", "actor": "env"},
            {"role": "user", "content": "Let's play tic-tac-toe. You are X and you move first.", "actor": "env"},
        ],
        "user_messages": [
            {"role": "system", "content": "You are O."},
            {"role": "assistant", "content": "Let's play tic-tac-toe. You are X and you move first."},
            {"role": "user", "content": BOARD},
            *user_steps,
        ],
    }


def test_o_on_taken_cells_and_moves_played_for_o_are_notes_that_never_decide() -> None:
    steps = [*o_move(4, ENV_REFUSES_4), *o_move(0, ENUM_REFUSES_0, call=1), *o_move(4, ENV_REFUSES_4, call=2)]
    moves = [{"position": 0, "mark": "X"}, {"position": 4, "mark": "O", "by": "env"}, {"position": 8, "mark": "X"}]
    rules = TicTacToe().attribution_rules({}, None)
    for reward, label in ((1.0, "none"), (0.0, "agent")):
        verdict = attribute(tictactoe_record(steps, reward, moves), rules=rules)
        assert verdict["label"] == label
        assert [r for r in verdict["reasons"] if r["check"] != "user_tool_errors"] == [
            reason(
                "user_taken_cells",
                "user",
                "O tried 3 taken cell(s) [4, 0, 4], 1 of them again after being refused",
                at("user_messages", 4),
                "note",
            ),
            reason(
                "env_moved_for_user",
                "user",
                "the environment played O's move(s) [4] for a user that made no legal move",
                None,
                "note",
            ),
        ]


def test_o_playing_legal_moves_or_refused_for_other_reasons_gets_no_reason() -> None:
    steps = [
        *o_move(9, "Error: make_move: arguments.position must be at most 8, got 9"),
        *o_move(1, json.dumps({"board": [None] * 9, "error": "it is not O's turn; X moves next"}), call=1),
        *o_move(1, BOARD, status="success", call=2),
    ]
    moves = [{"position": 0, "mark": "X"}, {"position": 1, "mark": "O"}]
    verdict = attribute(tictactoe_record(steps, 0.0, moves), rules=TicTacToe().attribution_rules({}, None))
    assert [r["check"] for r in verdict["reasons"]] == ["user_tool_errors"]


def test_a_support_desk_customer_may_say_its_goal_and_identifiers_but_not_the_rest_of_its_persona() -> None:
    task = {"env_seed": {"task_id": "sd-01"}}
    desk, desk_task = SupportDesk(), resolve_task(task)
    rules = desk.attribution_rules(task, None)
    assert rules.may_say == (desk_task.instructions, desk_task.request, *desk_task.known.values())
    persona = desk.user_persona(task)
    hidden = next(line for line in persona.splitlines() if desk_task.instructions not in line and len(line) > 80)
    record = {
        "status": "truncated",
        "stop_reason": "max_turns",
        "reward": 0.0,
        "messages": [{"role": "assistant", "content": "Hello! How can I help?", "actor": "env"}],
        "user_messages": [
            {"role": "system", "content": persona},
            {"role": "user", "content": "Hello! How can I help?"},
            {"role": "assistant", "content": f"Hi. {desk_task.instructions} My email is {desk_task.known['email']}."},
            {"role": "user", "content": "Sure."},
            {"role": "assistant", "content": hidden},
        ],
    }
    found = [(r["check"], r["where"]) for r in attribute(record, rules=rules)["reasons"]]
    assert ("revealed_instructions", at("user_messages", 4)) in found
    assert ("revealed_instructions", at("user_messages", 2)) not in found
    assert ("revealed_instructions", at("user_messages", 2)) in [
        (r["check"], r["where"]) for r in attribute(record)["reasons"]
    ], "without the environment's may_say the goal would count as a recital"


def test_every_environment_has_a_judge_prompt_and_the_base_class_has_defaults() -> None:
    class Plain(Environment):
        name = "plain"

    assert Plain().attribution_rules({}, None) == AttributionRules()
    assert Plain().judge_prompt({}) == DEFAULT_JUDGE_PROMPT
    desk_prompt = SupportDesk().judge_prompt({"env_seed": {"task_id": "sd-02"}})
    assert resolve_task({"env_seed": {"task_id": "sd-02"}}).instructions in desk_prompt
    assert "never a fault" in TicTacToe().judge_prompt({})
    assert "event number, duration or time" in CALENDAR.judge_prompt({})


def test_a_tool_results_fault_belongs_to_an_error_and_is_caller_or_tool() -> None:
    assert ToolResult("boom", None, is_error=True, fault="tool").fault == "tool"
    with pytest.raises(ValueError, match="needs is_error=True"):
        ToolResult("ok", None, fault="tool")
    with pytest.raises(ValueError, match="must be 'caller', 'tool' or None, got 'server'"):
        ToolResult("boom", None, is_error=True, fault="server")  # type: ignore[arg-type]
