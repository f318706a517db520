"""Calendar: a scheduling assistant (the policy) builds a day's calendar from the user's requests.

Two forms, one verifier (scoring.py, NeMo Gym's semantics):
- printed: the policy prints the whole calendar as a JSON list in every reply, and the last reply
  is graded, exactly as NeMo Gym grades its calendar rows (which are accepted as they are:
  `responses_create_params.input` plus `exp_cal_state`);
- tools (`env_seed.tools: true`): the policy edits the calendar with add_event / move_event /
  delete_event / list_events, and the calendar in the environment's state is graded.
With `env_seed.requests`, the simulated user makes the requests `env_seed.per_turn` (1 or 2) at a
time and ends with the stop token once all are made. The environment, not a small model's memory,
keeps track of what was asked: each user turn is shown its next request(s), and the pointer moves
on when the user's turn closes (`settle_user_turn`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import orjson
from langchain_core.messages import AIMessage

from sparring.core.attribution import AttributionRules, Episode, Reason, at, quote, reason, text_of, words
from sparring.core.errors import SeedError
from sparring.envs.base import Actor, Environment, Verdict
from sparring.envs.calendar.scoring import TimeFormatError, clock, grade_events, grade_text, minutes
from sparring.tools.specs import ToolResult, ToolSpec

STOP_TOKEN = "###STOP###"
EVENT_ID = {"type": "integer", "minimum": 1, "description": "The event's number, as the user gave it."}
START_TIME = {"type": "string", "description": "Start time like '10am' or '2:30pm'."}
NO_ARGUMENTS = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


ADD_EVENT = ToolSpec(
    "add_event",
    "Add an event to today's calendar.",
    _object(
        {
            "event_id": EVENT_ID,
            "event_name": {"type": "string", "description": "A short name for the event."},
            "start_time": START_TIME,
            "duration": {"type": "integer", "minimum": 1, "maximum": 1440, "description": "Length in minutes."},
        }
    ),
)
MOVE_EVENT = ToolSpec(
    "move_event", "Move an event to a new start time.", _object({"event_id": EVENT_ID, "start_time": START_TIME})
)
DELETE_EVENT = ToolSpec("delete_event", "Remove an event from the calendar.", _object({"event_id": EVENT_ID}))
LIST_EVENTS = ToolSpec("list_events", "Show today's calendar.", NO_ARGUMENTS)
TOOLS = (ADD_EVENT, MOVE_EVENT, DELETE_EVENT, LIST_EVENTS)

PRINTED_PROMPT = (
    "You are a scheduling assistant keeping the user's calendar for today. Schedule every event the user "
    "asks for: give it the duration asked for, keep it inside the working day, satisfy its time constraint "
    "(before X: it ends by X; after X: it starts at or after X; between X and Y: it starts at or after X and "
    "ends by Y; at X: it starts at X), and never let two events overlap. Use the event numbers the user "
    "gives. In every reply, print the whole calendar so far as a JSON list, one object per event: "
    '[{"event_id": 1, "event_name": "Team sync", "start_time": "10am", "duration": 60}]. '
    "Write times like 10am or 2:30pm."
)
TOOLS_PROMPT = (
    "You are a scheduling assistant keeping the user's calendar for today with the tools add_event, "
    "move_event, delete_event and list_events. Schedule every event the user asks for: give it the duration "
    "asked for, keep it inside the working day, satisfy its time constraint (before X: it ends by X; after "
    "X: it starts at or after X; between X and Y: it starts at or after X and ends by Y; at X: it starts at "
    "X), and never let two events overlap. Use the event numbers the user gives and times like 10am or "
    "2:30pm. After the tool calls, tell the user in one short sentence what you scheduled."
)
REQUESTS_PERSONA = (
    "You are planning your day with a scheduling assistant. Each time, you are shown your next request: "
    "write it to the assistant in plain words, keeping the event number, duration and time. Never write JSON "
    "or code, and follow what you are told to do when your requests are all made."
)  # the stop token is only named once it is time to use it: a small model says it at once otherwise
JUDGE_PROMPT = (
    "The simulated user plans its day with the assistant, a scheduling assistant. Each turn the user is "
    "shown its next request (an event number, a name, a duration in minutes and a time constraint) and "
    "must write it to the assistant. The user is at fault when a request it wrote differs from the one it "
    "was shown (a missing or wrong event number, duration or time, before instead of after), when it wrote "
    "something else instead, or when it ended before making all of them. Otherwise a wrong calendar (an "
    "event missing, misplaced, overlapping another, or not printed as asked) is the assistant's failure."
)
ALL_MADE = f"All your requests are made. Reply with only {STOP_TOKEN}"
DONE_PERSONA = f"The assistant has answered your scheduling request. Reply with only {STOP_TOKEN}."


def _expect(event_id: int, name: str, duration: int, constraint: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_name": name,
        "duration": duration,
        "constraint": constraint,
        "min_time": "10am",
        "max_time": "4pm",
    }


DEFAULT_SEED: Mapping[str, Any] = MappingProxyType(
    {
        "exp_cal_state": {
            "1": _expect(1, "Team sync", 60, "at 10am"),
            "2": _expect(2, "Lunch with Sam", 45, "between 12pm and 1:30pm"),
            "3": _expect(3, "Gym", 90, "after 2pm"),
        },
        "requests": [
            "Please add event 1, Team sync, for 60 minutes, at 10am.",
            "Please add event 2, Lunch with Sam, for 45 minutes, between 12pm and 1:30pm.",
            "Please add event 3, Gym, for 90 minutes, after 2pm.",
        ],
    }
)
"""The task `sparring run --env calendar` plays when it is given none."""


class Calendar(Environment):
    """The calendar environment; the episode state is a JSON-able dict."""

    name = "calendar"
    # A policy turn may take several tool calls (tools form); the user only talks.
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"max_turns": 8, "max_steps_per_turn": 6, "max_user_steps_per_turn": 1, "user_tool_choice": "none"}
    )

    def tools(self, actor: Actor) -> Sequence[ToolSpec]:
        """The tools the policy may get (a task switches them on); the user only talks."""
        return TOOLS if actor == "policy" else ()

    def episode_tools(self, state: dict[str, Any], actor: Actor) -> Sequence[ToolSpec]:
        """The policy's calendar tools in the tools form; nobody else has tools."""
        return TOOLS if actor == "policy" and state.get("use_tools") else ()

    def default_messages(self) -> list[dict[str, str]]:
        """The assistant's instructions; the user speaks first with its first request."""
        return [{"role": "system", "content": PRINTED_PROMPT}]

    def user_persona(self, task: dict[str, Any]) -> str:
        """A user with requests to make, or (a NeMo Gym row, already asked) one who only ends the episode."""
        if task.get("user_persona"):
            return task["user_persona"]
        requests = _seed_of(task).get("requests") or []
        return REQUESTS_PERSONA if requests else DONE_PERSONA

    async def seed(self, task: dict[str, Any]) -> dict[str, Any]:
        """The expected calendar (`env_seed.exp_cal_state`, or a NeMo Gym row's own), the requests and the form."""
        seed = _seed_of(task)
        expected = seed.get("exp_cal_state", (task.get("metadata") or {}).get("exp_cal_state"))
        where = "env_seed.exp_cal_state" if "exp_cal_state" in seed else "exp_cal_state"
        if expected is None:
            raise SeedError("env_seed.exp_cal_state: missing (the expected events, keyed by event id)")
        requests = seed.get("requests") or []
        if not isinstance(requests, list) or not all(isinstance(r, str) for r in requests):
            raise SeedError("env_seed.requests: must be a list of strings (the user's requests, in order)")
        if not isinstance(seed.get("tools", False), bool):
            raise SeedError("env_seed.tools: must be true or false")
        if seed.get("per_turn", 1) not in (1, 2):
            raise SeedError(f"env_seed.per_turn: requests the user makes per turn, 1 or 2, got {seed['per_turn']!r}")
        return {
            "exp_cal_state": _checked_expectation(expected, where),
            "requests": list(requests),
            "use_tools": seed.get("tools", False),
            "per_turn": seed.get("per_turn", 1),
            "revealed": 0,
            "events": [],
        }

    def settle_user_turn(self, state: dict[str, Any]) -> ToolResult | None:
        """The user's turn is over: the requests it was shown count as made (nothing for the policy to read)."""
        if state["revealed"] >= len(state["requests"]):
            return None
        return ToolResult(content="", state={**state, "revealed": state["revealed"] + state["per_turn"]})

    async def call_tool(self, state: dict[str, Any], actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Edit or show the calendar; a bad call comes back as an error with the calendar unchanged."""
        if actor != "policy" or not state.get("use_tools"):
            return _error(state, f"{actor} has no calendar tools in this task")
        events = state["events"]
        by_id = {event["event_id"]: event for event in events}
        event_id = arguments.get("event_id")
        try:
            if name == "list_events":
                return _result(state, events, "The calendar.")
            if name == "add_event":
                if event_id in by_id:
                    return _error(state, f"event {event_id} is already on the calendar; move or delete it instead")
                event = {
                    "event_id": event_id,
                    "event_name": arguments["event_name"],
                    "start_time": _checked_start(arguments["start_time"], arguments["duration"]),
                    "duration": arguments["duration"],
                }
                return _result(state, [*events, event], f"Added event {event_id}.", event)
            if event_id not in by_id:
                return _error(state, f"there is no event {event_id}; the calendar has {_ids(events)}")
            if name == "move_event":
                moved = {
                    **by_id[event_id],
                    "start_time": _checked_start(arguments["start_time"], by_id[event_id]["duration"]),
                }
                updated = [moved if e["event_id"] == event_id else e for e in events]
                return _result(state, updated, f"Moved event {event_id}.", moved)
            if name == "delete_event":
                return _result(state, [e for e in events if e["event_id"] != event_id], f"Deleted event {event_id}.")
        except TimeFormatError as exc:
            return _error(state, str(exc))
        return _error(state, f"unknown tool {name!r}; the tools are {', '.join(t.name for t in TOOLS)}")

    def observe(self, state: dict[str, Any], actor: Actor) -> str | None:
        """For the user: its next request(s), or that all are made. The policy keeps (or lists) the calendar itself."""
        if actor != "user" or not state["requests"]:
            return None
        revealed = state["revealed"]
        if revealed >= len(state["requests"]):
            return f"({ALL_MADE}.)"
        shown = " ".join(state["requests"][revealed : revealed + state["per_turn"]])
        return f"(Your next request: {shown} Write it to the assistant now, in plain words.)"

    def attribution_rules(self, task: dict[str, Any], state: Any) -> AttributionRules:
        """A request the user was shown and did not pass on faithfully is the user's fault (see the check)."""
        return ATTRIBUTION_RULES

    def judge_prompt(self, task: dict[str, Any]) -> str:
        """The user must pass on each request it is shown; the calendar is the assistant's."""
        return JUDGE_PROMPT

    async def verify(self, state: dict[str, Any], messages: Sequence[Any]) -> Verdict:
        """The calendar in state (tools form) or in the policy's last reply (printed form), graded per check."""
        expected = state["exp_cal_state"]
        if state.get("use_tools"):
            grade, calendar = grade_events(state["events"], expected), state["events"]
        else:
            reply = last_reply(messages)
            grade = grade_text(reply, expected)
            calendar = None
        return Verdict(
            reward=grade.reward,
            components=grade.components,
            result={
                "reason": grade.reason,
                "failures": grade.failures,
                "calendar": calendar,
                "exp_cal_state": expected,
            },
        )


REQUEST = re.compile(r"event (\d+), ([^,]+), for (\d+) minutes, ([^.]*?)\.(?:\s|$)", re.I)
"""A request as the environment shows it (generator.py's and DEFAULT_SEED's wording)."""
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?m\b\.?", re.I)
_OPPOSITE = {"before": "after", "after": "before"}


def check_requests_passed_on(episode: Episode) -> Iterator[Reason]:
    """Each request the user was shown must reach the assistant with its event number, duration and times
    (and not "before" for "after"): the assistant cannot schedule an event the user misstated or left out.

    Lenient where a restatement keeps the meaning: a duration in hours ("1.5 hours" for 90 minutes, "an
    hour"), a time without its am/pm or in 24-hour form; `any time` requests need no time.
    """
    for turn in episode.user_turns:
        if turn.shown_index is None:
            continue
        shown = text_of(episode.user_messages[turn.shown_index])
        _, found, rest = shown.partition("(Your next request: ")
        if not found:
            continue
        said = episode.without_stop_tokens(turn.text)
        for request in REQUEST.finditer(rest):
            missing = _missing(request, said)
            if missing:
                yield reason(
                    "request_misstated",
                    "user",
                    f"the user's message left out or changed the {', '.join(missing)} of its request "
                    f"{quote(request.group().strip())}: it wrote {quote(said)}",
                    at("user_messages", turn.index),
                )


def _missing(request: re.Match[str], said: str) -> list[str]:
    """What of the request (event number, duration, times, kind) the user's words do not carry."""
    numbers = set(words(said))
    event_id, duration, constraint = request[1], int(request[3]), request[4].strip().lower()
    missing = [] if event_id in numbers else ["event number"]
    hours = duration / 60
    in_hours = f"{hours:g}" in numbers and re.search(r"\bhours?\b", said, re.I)
    an_hour = duration == 60 and re.search(r"\b(?:an|one)\s+hour\b", said, re.I)
    if str(duration) not in numbers and not in_hours and not an_hour:
        missing.append("duration")
    kind = constraint.partition(" ")[0]
    if kind == "any":
        return missing
    said_times = {_minutes_of(m) for m in _TIME.finditer(said)} | _clock_times(said)
    for time in _TIME.finditer(constraint):
        hour, minute = time[1], time[2] or "00"
        if _minutes_of(time) not in said_times and not (hour in numbers and (minute == "00" or minute in numbers)):
            missing.append("time")
            break
    opposite = _OPPOSITE.get(kind)
    if opposite and re.search(rf"\b{opposite}\b", said, re.I) and not re.search(rf"\b{kind}\b", said, re.I):
        missing.append(f"'{kind}'")
    return missing


def _minutes_of(time: re.Match[str]) -> int:
    hour, minute, half = int(time[1]) % 12, int(time[2] or 0), time[3].lower()
    return (hour + (12 if half == "p" else 0)) * 60 + minute


def _clock_times(text: str) -> set[int]:
    """24-hour times ("14:30") in the text, as minutes after midnight."""
    return {int(h) * 60 + int(m) for h, m in re.findall(r"\b(\d{1,2}):(\d{2})\b(?!\s*[ap]\.?m)", text, re.I)}


ATTRIBUTION_RULES = AttributionRules(checks=(check_requests_passed_on,))


def _seed_of(task: dict[str, Any]) -> Mapping[str, Any]:
    """The task's env_seed; a task that is neither a NeMo Gym row nor brings an env_seed gets the default."""
    metadata = task.get("metadata") or {}
    if task.get("env_seed") or "exp_cal_state" in metadata or "responses_create_params" in metadata:
        return task.get("env_seed") or {}
    return DEFAULT_SEED


def last_reply(messages: Sequence[Any]) -> str:
    """The text of the policy's last message (empty when it ended on a tool call or said nothing)."""
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message.content if isinstance(message.content, str) else ""
    return ""


def _checked_expectation(expected: Any, where: str) -> dict[str, dict[str, Any]]:
    """`exp_cal_state` with every field the grader reads present and readable."""
    if not isinstance(expected, dict):
        raise SeedError(f"{where}: must be an object keyed by event id, got {type(expected).__name__}")
    for event_id, event in expected.items():
        at = f"{where}.{event_id}"
        if not isinstance(event, dict):
            raise SeedError(f"{at}: must be an object with duration, constraint, min_time, max_time")
        for name in ("duration", "min_time", "max_time"):
            if name not in event:
                raise SeedError(f"{at}.{name}: missing")
        if isinstance(event["duration"], bool) or not isinstance(event["duration"], int) or event["duration"] < 1:
            raise SeedError(f"{at}.duration: must be a positive number of minutes, got {event['duration']!r}")
        try:
            minutes(event["min_time"])
            minutes(event["max_time"])
            _check_constraint(event.get("constraint"))
        except TimeFormatError as exc:
            raise SeedError(f"{at}: {exc}") from None
    return {event_id: dict(event) for event_id, event in expected.items()}


def _check_constraint(constraint: Any) -> None:
    if constraint is None:
        return
    if not isinstance(constraint, str):
        raise TimeFormatError(f"constraint must be a string or null, got {constraint!r}")
    kind, _, rest = constraint.partition(" ")
    if kind == "between":
        low, separator, high = rest.partition(" and ")
        if not separator:
            raise TimeFormatError(f"constraint {constraint!r}: expected 'between X and Y'")
        minutes(low)
        minutes(high)
    elif kind in ("before", "after", "at"):
        minutes(rest)
    else:
        raise TimeFormatError(f"constraint {constraint!r}: expected before / after / between ... and ... / at")


def _checked_start(start_time: str, duration: int) -> str:
    """The start time as the calendar keeps it, if the event fits in the day."""
    start = minutes(start_time)
    if start < 0 or start + duration > 24 * 60:
        raise TimeFormatError(f"an event at {start_time} lasting {duration} minutes does not fit in the day")
    return clock(start)


def _ids(events: list[dict[str, Any]]) -> str:
    return ", ".join(str(e["event_id"]) for e in events) or "no events"


def _calendar_json(events: list[dict[str, Any]], **extra: Any) -> str:
    ordered = sorted(events, key=lambda e: minutes(e["start_time"]))
    return orjson.dumps({"calendar": ordered, **extra}).decode()


def _result(
    state: dict[str, Any], events: list[dict[str, Any]], message: str, changed: dict[str, Any] | None = None
) -> ToolResult:
    """The new state and what the policy sees: the message, any overlap with the changed event, the calendar."""
    extra: dict[str, Any] = {"result": message}
    if changed is not None:
        start = minutes(changed["start_time"])
        end = start + changed["duration"]
        clashes = [
            e["event_id"]
            for e in events
            if e is not changed and minutes(e["start_time"]) < end and start < minutes(e["start_time"]) + e["duration"]
        ]
        if clashes:
            extra["warning"] = f"event {changed['event_id']} overlaps event(s) {', '.join(map(str, clashes))}"
    return ToolResult(content=_calendar_json(events, **extra), state={**state, "events": events})


def _error(state: dict[str, Any], message: str) -> ToolResult:
    return ToolResult(content=_calendar_json(state["events"], error=message), state=state, is_error=True)
