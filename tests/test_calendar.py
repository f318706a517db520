"""Calendar: NeMo Gym's grading (one crafted final state per reward component), the tools, the seed,
the generator, and full scripted episodes over real HTTP reaching reward 1 and 0."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from sparring.core.settings import EpisodeSettings
from sparring.core.task import parse_task
from sparring.engine.engine import Engine
from sparring.envs.calendar import Calendar
from sparring.envs.calendar.env import DEFAULT_SEED, SeedError
from sparring.envs.calendar.generator import generate_tasks
from sparring.envs.calendar.scoring import TimeFormatError, find_calendar, grade_events, grade_text, minutes
from sparring.testing import FakeModelServer
from sparring.testing.responders import calendar_players


def expect(duration: int, constraint: str | None, min_time: str = "10am", max_time: str = "4pm") -> dict[str, Any]:
    return {"duration": duration, "constraint": constraint, "min_time": min_time, "max_time": max_time}


def event(event_id: int, start: str, duration: int, name: str = "x") -> dict[str, Any]:
    return {"event_id": event_id, "event_name": name, "start_time": start, "duration": duration}


EXPECTED = {"1": expect(60, "at 10am"), "2": expect(30, "between 12pm and 1pm"), "3": expect(45, "after 2pm")}
GOOD = [event(1, "10am", 60), event(2, "12:15pm", 30), event(3, "2:30pm", 45)]


def printed(calendar: list[dict[str, Any]]) -> str:
    return "Here you go:\n```json\n" + json.dumps(calendar, indent=2) + "\n```"


# ---- times and the printed calendar -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"), [("10am", 600), ("12am", 0), ("12pm", 720), ("2:30pm", 870), ("14:30", 870), (" 9am ", 540)]
)
def test_times_read_as_nemo_gym_reads_them(text: str, value: int) -> None:
    assert minutes(text) == value


@pytest.mark.parametrize("text", ["10AM", "noon", "9", "", 600])
def test_unreadable_times_are_errors(text: Any) -> None:
    with pytest.raises(TimeFormatError):
        minutes(text)


def test_the_first_json_list_of_objects_is_the_calendar() -> None:
    assert find_calendar('ids [1, 2] then [{"event_id": 1}] and [{"event_id": 2}]') == [{"event_id": 1}]
    assert find_calendar("no list [1, 2] here, nor [] nor [oops {]") is None


# ---- grading: one crafted final state per component ---------------------------------------------


def test_a_correct_calendar_passes_every_check() -> None:
    grade = grade_text(printed(GOOD), EXPECTED)
    assert (grade.reward, grade.reason, grade.failures) == (1.0, "pass", [])
    assert set(grade.components.values()) == {1.0}


@pytest.mark.parametrize(
    ("reply", "reason", "failure"),
    [
        ("<think>hmm</think>" + printed(GOOD), "think_found", "<think>"),
        ("I scheduled everything!", "no_json_list", "no JSON list"),
        (printed([{"event_id": 1, "start_time": "10am"}]), "error_in_grading", "missing duration"),
        (printed([event(1, "10 o'clock", 60)]), "error_in_grading", "cannot read the time"),
    ],
)
def test_format_failures_score_zero_everywhere(reply: str, reason: str, failure: str) -> None:
    grade = grade_text(reply, EXPECTED)
    assert (grade.reward, grade.reason) == (0.0, reason)
    assert grade.components["format"] == 0.0 and failure in grade.failures[0]


@pytest.mark.parametrize(
    ("calendar", "component", "reason", "failure"),
    [
        (GOOD[:2], "events", "different_number_of_events", "event 3: missing"),
        ([*GOOD[:2], event(4, "2:30pm", 45)], "events", "error_in_grading", "event 4: not expected"),
        ([GOOD[0], event(2, "12:15pm", 45), GOOD[2]], "durations", "constraint_violated", "lasts 45 minutes"),
        ([GOOD[0], GOOD[1], event(3, "3:30pm", 45)], "windows", "constraint_violated", "outside 10am-4pm"),
        ([GOOD[0], GOOD[1], event(3, "1:30pm", 45)], "constraints", "constraint_violated", "breaks 'after 2pm'"),
        ([event(1, "10:30am", 60), GOOD[1], GOOD[2]], "constraints", "constraint_violated", "breaks 'at 10am'"),
        ([GOOD[0], event(2, "12:45pm", 30), GOOD[2]], "constraints", "constraint_violated", "between 12pm and 1pm"),
    ],
)
def test_each_failed_check_has_its_component_and_says_why(calendar, component, reason, failure) -> None:
    grade = grade_events(calendar, EXPECTED)
    assert grade.reward == 0.0 and grade.reason == reason
    assert grade.components[component] < 1.0
    assert [name for name, value in grade.components.items() if value < 1.0] == [component]
    assert any(failure in line for line in grade.failures), grade.failures


def test_before_means_ending_by_the_time() -> None:
    expected = {"1": expect(60, "before 12pm")}
    assert grade_events([event(1, "11am", 60)], expected).reward == 1.0
    assert grade_events([event(1, "11:15am", 60)], expected).components["constraints"] == 0.0


def test_overlaps_fail_no_overlaps_only() -> None:
    expected = {"1": expect(60, None), "2": expect(60, None)}
    grade = grade_events([event(1, "10am", 60), event(2, "10:30am", 60)], expected)
    assert (grade.reward, grade.reason) == (0.0, "conflicting_events")
    assert grade.components["no_overlaps"] == 0.0 and grade.components["constraints"] == 1.0
    assert grade.failures == ["events 1 and 2 overlap"]
    assert grade_events([event(1, "10am", 60), event(2, "11am", 60)], expected).reward == 1.0  # touching is fine


def test_no_expected_events_pass_any_reply_without_think() -> None:
    assert grade_text("Nothing to change today.", {}).reward == 1.0
    assert grade_text("<think>", {}).reward == 0.0


# ---- NeMo Gym rows as they are ----------------------------------------------------------------------


def nemo_gym_row() -> dict[str, Any]:
    return {
        "responses_create_params": {
            "input": [
                {"role": "system", "content": "You are a scheduling assistant. Print the calendar as JSON."},
                {"role": "user", "content": "Add a 60 minute standup at 10am."},
                {"role": "assistant", "content": printed([event(1, "10am", 60, "Standup")])},
                {"role": "user", "content": "Also a 30 minute call between 12pm and 1pm, please."},
            ]
        },
        "exp_cal_state": {"1": expect(60, "at 10am"), "2": expect(30, "between 12pm and 1pm")},
    }


async def test_a_nemo_gym_row_is_graded_on_the_last_reply() -> None:
    env = Calendar()
    task = parse_task(nemo_gym_row())
    state = await env.seed(task)
    assert state["requests"] == [] and env.episode_tools(state, "user") == ()
    assert "###STOP###" in env.user_persona(task)
    history = [HumanMessage("hi"), AIMessage(printed([event(1, "10am", 60), event(2, "12pm", 30)]))]
    assert (await env.verify(state, history)).reward == 1.0
    late = [*history, AIMessage("Anything else?")]
    verdict = await env.verify(state, late)
    assert (verdict.reward, verdict.result["reason"]) == (0.0, "no_json_list")


@pytest.mark.parametrize(
    ("seed", "field"),
    [
        ({"exp_cal_state": {"1": {"duration": 60, "min_time": "10am"}}}, "env_seed.exp_cal_state.1.max_time: missing"),
        ({"exp_cal_state": {"1": expect(0, None)}}, "env_seed.exp_cal_state.1.duration"),
        ({"exp_cal_state": {"1": expect(30, "around 10am")}}, "expected before / after / between"),
        ({"exp_cal_state": {"1": expect(30, "between 10am")}}, "expected 'between X and Y'"),
        ({"exp_cal_state": []}, "must be an object keyed by event id"),
        ({"requests": ["hi"]}, "env_seed.exp_cal_state: missing"),
        ({"exp_cal_state": {}, "requests": "add a meeting"}, "env_seed.requests"),
    ],
)
async def test_bad_seeds_name_the_field(seed: dict[str, Any], field: str) -> None:
    with pytest.raises(SeedError, match=field.replace("(", r"\(").replace("'", "'")):
        await Calendar().seed({"env_seed": seed})


async def test_a_task_without_calendar_data_plays_the_default_task() -> None:
    state = await Calendar().seed({})
    assert state["exp_cal_state"] == DEFAULT_SEED["exp_cal_state"] and len(state["requests"]) == 3


# ---- tools ----------------------------------------------------------------------------------------


async def tools_state() -> dict[str, Any]:
    return await Calendar().seed({"env_seed": {"exp_cal_state": EXPECTED, "tools": True, "requests": ["a", "b"]}})


async def test_tools_edit_the_calendar_and_verify_reads_the_state() -> None:
    env, state = Calendar(), await tools_state()
    assert [t.name for t in env.episode_tools(state, "policy")] == [
        "add_event",
        "move_event",
        "delete_event",
        "list_events",
    ]
    for item in [event(1, "10am", 60, "Sync"), event(2, "1pm", 30, "Call"), event(3, "2pm", 45, "Gym")]:
        result = await env.call_tool(state, "policy", "add_event", item)
        assert not result.is_error
        state = result.state
    moved = await env.call_tool(state, "policy", "move_event", {"event_id": 2, "start_time": "12:30pm"})
    state = moved.state
    assert json.loads(moved.content)["result"] == "Moved event 2."
    listed = json.loads((await env.call_tool(state, "policy", "list_events", {})).content)["calendar"]
    assert [e["start_time"] for e in listed] == ["10am", "12:30pm", "2pm"]
    verdict = await env.verify(state, [AIMessage("Done, no JSON printed.")])
    assert (verdict.reward, verdict.result["calendar"]) == (1.0, state["events"])
    state = (await env.call_tool(state, "policy", "delete_event", {"event_id": 3})).state
    verdict = await env.verify(state, [])
    assert (verdict.reward, verdict.components["events"]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        (
            "add_event",
            {"event_id": 1, "event_name": "again", "start_time": "3pm", "duration": 30},
            "already on the calendar",
        ),
        ("add_event", {"event_id": 5, "event_name": "late", "start_time": "11:30pm", "duration": 60}, "does not fit"),
        (
            "add_event",
            {"event_id": 5, "event_name": "odd", "start_time": "3 PM", "duration": 60},
            "cannot read the time",
        ),
        ("move_event", {"event_id": 9, "start_time": "3pm"}, "there is no event 9; the calendar has 1"),
        ("delete_event", {"event_id": 9}, "there is no event 9"),
        ("cancel_event", {"event_id": 1}, "unknown tool 'cancel_event'"),
    ],
)
async def test_illegal_calls_are_tool_errors_and_change_nothing(
    name: str, arguments: dict[str, Any], error: str
) -> None:
    env, state = Calendar(), await tools_state()
    state = (await env.call_tool(state, "policy", "add_event", event(1, "10am", 60))).state
    result = await env.call_tool(state, "policy", name, arguments)
    assert result.is_error and error in json.loads(result.content)["error"]
    assert result.state == state


async def test_an_overlap_is_allowed_with_a_warning_and_graded_later() -> None:
    env, state = Calendar(), await tools_state()
    state = (await env.call_tool(state, "policy", "add_event", event(1, "10am", 60))).state
    result = await env.call_tool(state, "policy", "add_event", event(2, "10:30am", 30))
    assert not result.is_error and json.loads(result.content)["warning"] == "event 2 overlaps event(s) 1"


async def test_the_printed_form_has_no_policy_tools_and_the_user_cannot_edit() -> None:
    env = Calendar()
    state = await env.seed({"env_seed": {"exp_cal_state": EXPECTED, "requests": ["a"]}})
    assert env.episode_tools(state, "policy") == ()
    result = await env.call_tool(state, "policy", "add_event", event(1, "10am", 60))
    assert result.is_error and "no calendar tools" in result.content


async def test_the_user_is_shown_its_requests_one_or_two_a_turn_then_told_to_stop() -> None:
    env = Calendar()
    seed = {"exp_cal_state": EXPECTED, "requests": ["First.", "Second.", "Third."], "per_turn": 2}
    state = await env.seed({"env_seed": seed})
    assert env.episode_tools(state, "user") == () and env.observe(state, "policy") is None
    assert (
        env.observe(state, "user")
        == "(Your next request: First. Second. Write it to the assistant now, in plain words.)"
    )
    state = env.settle_user_turn(state).state
    assert "Your next request: Third. Write" in env.observe(state, "user")
    state = env.settle_user_turn(state).state
    assert env.observe(state, "user") == "(All your requests are made. Reply with only ###STOP###.)"
    assert env.settle_user_turn(state) is None
    with pytest.raises(SeedError, match=r"env_seed\.per_turn"):
        await env.seed({"env_seed": {**seed, "per_turn": 3}})
    wrong = await env.call_tool(state, "user", "add_event", {})
    assert wrong.is_error and "no calendar tools" in wrong.content


# ---- the generator --------------------------------------------------------------------------------


async def test_generated_tasks_are_valid_and_their_solutions_score_one() -> None:
    tasks = generate_tasks(500, 1)
    assert len({t["id"] for t in tasks}) == 500
    env = Calendar()
    for task in tasks:
        parsed = parse_task(task)
        state = await env.seed(parsed)
        solution = parsed["env_seed"]["solution"]
        assert grade_events(solution, state["exp_cal_state"]).reward == 1.0, task["id"]
        assert len(state["requests"]) == len(solution) == len(state["exp_cal_state"])
    kinds = {(e["constraint"] or "none").split()[0] for t in tasks for e in t["env_seed"]["exp_cal_state"].values()}
    assert kinds == {"at", "before", "after", "between", "none"}


def test_the_generator_is_seeded() -> None:
    assert generate_tasks(20, 1) == generate_tasks(20, 1)
    assert generate_tasks(20, 1) != generate_tasks(20, 2)
    assert all(t["env_seed"]["tools"] for t in generate_tasks(3, 1, tools=True))


# ---- full scripted episodes -------------------------------------------------------------------------


@asynccontextmanager
async def calendar_episodes(shift: int = 0) -> AsyncIterator[Any]:
    async with FakeModelServer(calendar_players(shift)) as models:
        config = EpisodeSettings(
            policy_base_urls=[models.base_url],
            user_base_urls=[models.base_url],
            request_timeout_s=5.0,
            **Calendar.settings,
        )

        engine = Engine(config, env="calendar")

        async def play(task: dict[str, Any]) -> dict[str, Any]:
            return await engine.play(parse_task(task))

        try:
            yield play
        finally:
            await engine.aclose()


async def test_scripted_printed_episode_reaches_reward_one_and_a_shifted_calendar_zero() -> None:
    async with calendar_episodes() as play:
        record = await play({})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "user_stop", 1.0)
    assert record["num_turns"] == 3 and record["env_result"]["reason"] == "pass"
    user_said = [m["content"] for m in record["messages"] if m["role"] == "user"]
    assert user_said == list(DEFAULT_SEED["requests"]), "one request per turn, as the environment revealed them"
    async with calendar_episodes(shift=360) as play:
        record = await play({})
    assert (record["status"], record["reward"]) == ("completed", 0.0)
    assert record["reward_components"]["windows"] == 0.0 and record["reward_components"]["format"] == 1.0


async def test_scripted_tools_episode_reads_the_calendar_from_state() -> None:
    task = generate_tasks(1, 3, tools=True)[0]
    async with calendar_episodes() as play:
        record = await play(task)
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    assert len(record["env_result"]["calendar"]) == len(task["env_seed"]["requests"])
    assert any(m.get("tool_calls") for m in record["messages"] if m["role"] == "assistant")


async def test_scripted_nemo_gym_row_is_one_reply_then_the_user_stops() -> None:
    async with calendar_episodes() as play:
        record = await play(nemo_gym_row())
    assert (record["status"], record["stop_reason"], record["num_policy_calls"]) == ("completed", "user_stop", 1)
    # the scripted planner reads requests in the generator's wording only; this row's are free text
    assert record["reward"] == 0.0 and record["env_result"]["reason"] == "no_json_list"
