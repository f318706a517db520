"""Seeded calendar tasks, each built around a known feasible calendar (`env_seed.solution`).

The solution is drawn first (events of 30-90 minutes on a 15-minute grid, apart, inside the working
day); each event's constraint is then chosen so the solution satisfies it, so every task can score 1.
The same seed always gives the same tasks.
"""

from __future__ import annotations

import random
from typing import Any

from sparring.envs.calendar.env import PRINTED_PROMPT, TOOLS_PROMPT
from sparring.envs.calendar.scoring import clock, minutes

DAY_START, DAY_END = 10 * 60, 16 * 60  # NeMo Gym's default working day, 10am-4pm
NAMES = (
    "Team sync", "Dentist", "Lunch with Sam", "Gym", "Code review", "Call with the bank", "Design review",
    "Coffee with Priya", "Budget planning", "Doctor's appointment", "Grocery run", "1:1 with manager",
    "Piano lesson", "Interview", "Haircut", "Book club", "Yoga", "Car service", "Study group", "Volunteer shift",
)  # fmt: skip
MAX_EVENTS = 10  # ten events of at least 30 minutes still leave room to move in the six-hour day
CONSTRAINT_KINDS = ("at", "before", "after", "between", None)


def generate_tasks(
    n: int, seed: int, *, min_events: int = 3, max_events: int = 5, tools: bool = False
) -> list[dict[str, Any]]:
    """`n` calendar tasks from `seed`; each has requests for the user, the expectation and a solution."""
    if not 1 <= min_events <= max_events <= MAX_EVENTS:
        raise ValueError(f"need 1 <= min_events <= max_events <= {MAX_EVENTS}, got {min_events} and {max_events}")
    rng = random.Random(seed)
    return [_task(rng, f"calendar-{seed}-{i}", rng.randint(min_events, max_events), tools) for i in range(n)]


def _task(rng: random.Random, task_id: str, count: int, tools: bool) -> dict[str, Any]:
    solution = _solution(rng, count)
    expected: dict[str, dict[str, Any]] = {}
    requests = []
    for event in solution:
        start = minutes(event["start_time"])
        constraint = _constraint(rng, start, start + event["duration"])
        expected[str(event["event_id"])] = {
            "event_id": event["event_id"],
            "event_name": event["event_name"],
            "duration": event["duration"],
            "constraint": constraint,
            "min_time": clock(DAY_START),
            "max_time": clock(DAY_END),
        }
        when = constraint or "any time between 10am and 4pm"
        requests.append(
            f"Please add event {event['event_id']}, {event['event_name']}, for {event['duration']} minutes, {when}."
        )
    return {
        "id": task_id,
        "env": "calendar",
        "messages": [{"role": "system", "content": TOOLS_PROMPT if tools else PRINTED_PROMPT}],
        "env_seed": {
            "exp_cal_state": expected,
            "requests": requests,
            "per_turn": rng.choice((1, 2)),
            "tools": tools,
            "solution": solution,
        },
        "limits": {"max_turns": count + 2},
    }


def _solution(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """`count` events that fit the day without overlapping, numbered in the order the user will ask."""
    durations = [rng.choice((30, 45, 60, 75, 90)) for _ in range(count)]
    while sum(durations) > DAY_END - DAY_START - 30:  # leave room to move: shorten the longest
        longest = durations.index(max(durations))
        durations[longest] -= 15
    slack = (DAY_END - DAY_START - sum(durations)) // 15
    cuts = sorted(rng.randint(0, slack) for _ in range(count))  # gaps before each event, in 15-minute steps
    names = rng.sample(NAMES, count)
    order = list(range(count))
    rng.shuffle(order)  # the user asks in an order unrelated to the time of day
    placed, cursor, previous_cut = [], DAY_START, 0
    for slot, duration in enumerate(durations):
        cursor += (cuts[slot] - previous_cut) * 15
        previous_cut = cuts[slot]
        placed.append((cursor, duration))
        cursor += duration
    events = [
        {"event_id": order[slot] + 1, "event_name": names[slot], "start_time": clock(start), "duration": duration}
        for slot, (start, duration) in enumerate(placed)
    ]
    return sorted(events, key=lambda e: e["event_id"])


def _constraint(rng: random.Random, start: int, end: int) -> str | None:
    """A constraint the event at start-end meets, on the half-hour grid where possible."""
    kind = rng.choice(CONSTRAINT_KINDS)
    if kind == "at":
        return f"at {clock(start)}"
    if kind == "before":
        return f"before {clock(min(DAY_END, _round_up(end) + 30 * rng.randint(0, 2)))}"
    if kind == "after":
        return f"after {clock(max(DAY_START, _round_down(start) - 30 * rng.randint(0, 2)))}"
    if kind == "between":
        low = max(DAY_START, _round_down(start) - 30 * rng.randint(0, 1))
        high = min(DAY_END, _round_up(end) + 30 * rng.randint(0, 1))
        return f"between {clock(low)} and {clock(high)}"
    return None


def _round_up(total: int) -> int:
    return -(-total // 30) * 30


def _round_down(total: int) -> int:
    return total // 30 * 30
