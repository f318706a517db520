"""Calendar scoring with NeMo Gym's semantics, one reward component per check.

NeMo Gym's calendar server gives 1 only when the assistant's calendar has exactly the expected
events (matched by `event_id`), each with its duration, inside its `min_time`-`max_time` window,
meeting its constraint (`before X`: ends by X; `after X`: starts at or after X; `between X and Y`:
starts at or after X and ends by Y; `at X`: starts at X), and no two events overlap. A reply with
`<think>` in it, or without a JSON list of events, scores 0; an empty expectation scores 1. Times
read as NeMo Gym reads them: `10am`, `2:30pm` (lower-case am/pm) or 24-hour `14:30`.

Here each check is also a component in [0, 1], so a failed episode says which check failed:
`format` (a readable calendar), `events` (exactly the expected ids), `no_overlaps`, and `durations`,
`windows`, `constraints` as the share of the expected events present that pass. `reason` carries
NeMo Gym's own grade reason, for comparing verdicts row by row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EVENT_FIELDS = ("event_id", "event_name", "start_time", "duration")
COMPONENTS = ("format", "events", "durations", "windows", "constraints", "no_overlaps")
_JSON_DECODER = json.JSONDecoder()


class TimeFormatError(ValueError):
    """A time NeMo Gym's grader could not read either."""


def minutes(text: Any) -> int:
    """Minutes after midnight for `10am`, `10:30am`, `12pm` or `14:30`."""
    if not isinstance(text, str):
        raise TimeFormatError(f"a time must be a string like '10am' or '14:30', got {text!r}")
    value = text.strip()
    try:
        for suffix, offset in (("am", 0), ("pm", 12 * 60)):
            if suffix in value:
                hour_text, _, minute_text = value.replace(suffix, "").partition(":")
                hour, minute = int(hour_text), int(minute_text or 0)
                return (0 if hour == 12 else hour * 60) + offset + minute
        hour_text, minute_text = value.split(":")
        return int(hour_text) * 60 + int(minute_text)
    except ValueError:
        raise TimeFormatError(f"cannot read the time {text!r}; write it like '10am', '2:30pm' or '14:30'") from None


def clock(total: int) -> str:
    """`10am` / `2:30pm`: the 12-hour form the prompts and generated tasks use."""
    hour, minute = divmod(total, 60)
    suffix = "am" if hour < 12 else "pm"
    shown = hour % 12 or 12
    return f"{shown}{suffix}" if minute == 0 else f"{shown}:{minute:02d}{suffix}"


def find_calendar(text: str) -> list[Any] | None:
    """The first JSON list in the text that holds an object (the printed calendar), or None."""
    for match in re.finditer(r"\[", text):
        try:
            value, _ = _JSON_DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list) and any(isinstance(item, dict) for item in value):
            return value
    return None


def constraint_holds(constraint: str | None, start: int, end: int) -> bool:
    """Whether an event from `start` to `end` (minutes) meets a `before`/`after`/`between`/`at` constraint."""
    if not constraint:
        return True
    kind, _, rest = constraint.strip().partition(" ")
    if kind == "before":
        return end <= minutes(rest)
    if kind == "after":
        return start >= minutes(rest)
    if kind == "between":
        low, separator, high = rest.partition(" and ")
        if not separator:
            raise TimeFormatError(f"constraint {constraint!r}: expected 'between X and Y'")
        return start >= minutes(low) and end <= minutes(high)
    if kind == "at":
        return start == minutes(rest)
    return True


@dataclass(slots=True)
class Grade:
    """Reward, components, NeMo Gym's reason, and a readable line per failure."""

    reward: float
    components: dict[str, float]
    reason: str
    failures: list[str] = field(default_factory=list)


def grade_text(reply: str, expected: Mapping[str, Mapping[str, Any]]) -> Grade:
    """Grade the assistant's last reply, as NeMo Gym's calendar server does."""
    if "<think>" in reply:
        return _zero("think_found", "the reply contains <think>")
    if not expected:
        return Grade(1.0, dict.fromkeys(COMPONENTS, 1.0), "pass")
    calendar = find_calendar(reply)
    if not calendar:
        return _zero("no_json_list", "the reply has no JSON list of events")
    return grade_events(calendar, expected)


def grade_events(calendar: Sequence[Any], expected: Mapping[str, Mapping[str, Any]]) -> Grade:
    """Grade a calendar (a list of {event_id, event_name, start_time, duration}) against `exp_cal_state`."""
    events: list[tuple[dict[str, Any], int, int]] = []
    failures: list[str] = []
    for i, event in enumerate(calendar):
        problem = _event_problem(event)
        if problem:
            failures.append(f"calendar[{i}]: {problem}")
            continue
        start = minutes(event["start_time"])
        events.append((event, start, start + event["duration"]))
    if failures:
        return _zero("error_in_grading", *failures)
    if not expected:
        return Grade(1.0, dict.fromkeys(COMPONENTS, 1.0), "pass")

    by_id = {str(event["event_id"]): (event, start, end) for event, start, end in events}
    missing = sorted(set(expected) - set(by_id), key=_id_order)
    extra = sorted(set(by_id) - set(expected), key=_id_order)
    failures += [f"event {i}: missing" for i in missing] + [f"event {i}: not expected" for i in extra]

    overlaps = 0
    for a in range(len(events)):
        for b in range(a + 1, len(events)):
            (first, s1, e1), (second, s2, e2) = events[a], events[b]
            if first != second and s1 < e2 and s2 < e1:
                overlaps += 1
                failures.append(f"events {first['event_id']} and {second['event_id']} overlap")

    durations = windows = constraints = 0
    for event_id, want in expected.items():
        if event_id not in by_id:
            continue
        event, start, end = by_id[event_id]
        if event["duration"] == want["duration"]:
            durations += 1
        else:
            failures.append(f"event {event_id}: lasts {event['duration']} minutes, expected {want['duration']}")
        if minutes(want["min_time"]) <= start and end <= minutes(want["max_time"]):
            windows += 1
        else:
            failures.append(
                f"event {event_id}: {clock(start)}-{clock(end)} is outside {want['min_time']}-{want['max_time']}"
            )
        if constraint_holds(want.get("constraint"), start, end):
            constraints += 1
        else:
            failures.append(f"event {event_id}: {clock(start)}-{clock(end)} breaks '{want.get('constraint')}'")

    count = len(expected) - len(missing)  # per-event checks cover the expected events that are there
    if not count:
        return Grade(0.0, {**dict.fromkeys(COMPONENTS, 0.0), "format": 1.0}, "different_number_of_events", failures)
    components = {
        "format": 1.0,
        "events": 1.0 if not missing and not extra else 0.0,
        "durations": durations / count,
        "windows": windows / count,
        "constraints": constraints / count,
        "no_overlaps": 1.0 if not overlaps else 0.0,
    }
    reward = 1.0 if all(value == 1.0 for value in components.values()) else 0.0
    return Grade(reward, components, _nemo_gym_reason(missing, extra, overlaps, reward), failures)


def _event_problem(event: Any) -> str | None:
    """Why a printed event cannot be graded (NeMo Gym's grader fails the whole reply on it), or None."""
    if not isinstance(event, dict):
        return f"expected an object with {', '.join(EVENT_FIELDS)}, got {event!r}"
    absent = [name for name in ("event_id", "start_time", "duration") if name not in event]
    if absent:
        return f"missing {', '.join(absent)}"
    duration = event["duration"]
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        return f"duration must be a number of minutes, got {duration!r}"
    try:
        minutes(event["start_time"])
    except TimeFormatError as exc:
        return str(exc)
    return None


def _nemo_gym_reason(missing: list[str], extra: list[str], overlaps: int, reward: float) -> str:
    """NeMo Gym's reason, in its order of checks: event count, conflicts, then per-event constraints."""
    if missing or extra:
        return "different_number_of_events" if len(missing) != len(extra) else "error_in_grading"
    if overlaps:
        return "conflicting_events"
    return "pass" if reward == 1.0 else "constraint_violated"


def _zero(reason: str, *failures: str) -> Grade:
    return Grade(0.0, dict.fromkeys(COMPONENTS, 0.0), reason, list(failures))


def _id_order(event_id: str) -> tuple[int, str]:
    return (0, f"{int(event_id):09d}") if event_id.isdigit() else (1, event_id)
