"""Scripted model behaviour for the fake server: reply steps, and responders that choose them.

A responder is any callable taking a `ModelRequest` and returning a step (or a string, or a list of
`Call`s, or an awaitable of one of those). The server counts calls per model name and per
`X-Session-ID`, and passes the count as `call_index`, so concurrent episodes never share a cursor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparring.testing.tokenizer import content_text

SCRIPT_END_TEXT = "(end of script)"


@dataclass(slots=True)
class ModelRequest:
    """What a responder sees of one call: the parsed request plus its place in the session."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: Any
    """"auto", "none", "required", or {"type": "function", "function": {"name": ...}}."""
    session_id: str | None
    call_index: int
    """How many calls this model name got before this one in this session (0 for the first)."""
    max_tokens: int | None = None
    endpoint: str = "chat"
    """"chat" for /v1/chat/completions, "completions" for token-in /v1/completions, "generate" for
    /inference/v1/generate."""
    adapter: str | None = None
    """The LoRA adapter the request named (loaded with /v1/load_lora_adapter), or None for a base model."""


@dataclass(frozen=True, slots=True)
class Say:
    """Reply with plain text."""

    text: str


LATE_REPLY = Say("(late reply)")


@dataclass(frozen=True, slots=True)
class Call:
    """Call one tool; a string `arguments` is sent as is, so it can be malformed JSON."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Calls:
    """Several tool calls in one reply, optionally after some text."""

    calls: tuple[Call, ...]
    text: str = ""


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with this HTTP status; `body` (JSON object or text) defaults to a vLLM-style error."""

    status: int = 500
    body: Mapping[str, Any] | str | None = None


@dataclass(frozen=True, slots=True)
class Hang:
    """Sleep before answering (to trigger client timeouts), then answer with `then`."""

    seconds: float
    then: Step = LATE_REPLY


@dataclass(frozen=True, slots=True)
class Cut:
    """Reply with `text` but stop as if `max_tokens` ran out: finish_reason "length", no end token."""

    text: str


@dataclass(frozen=True, slots=True)
class ContextFull:
    """Reject the call with vLLM's 400 "maximum context length" error, whatever the real length."""


Step = Say | Call | Calls | Fail | Hang | Cut | ContextFull
Reply = Step | str | Sequence[Call]
Responder = Callable[[ModelRequest], Reply | Awaitable[Reply]]
STEP_TYPES = (Say, Call, Calls, Fail, Hang, Cut, ContextFull)


def as_step(reply: Reply) -> Step:
    """A step from the shorthand forms: a string is `Say`, a list of `Call`s is `Calls`."""
    if isinstance(reply, STEP_TYPES):
        return reply
    if isinstance(reply, str):
        return Say(reply)
    if isinstance(reply, Sequence) and all(isinstance(c, Call) for c in reply):
        return Calls(tuple(c for c in reply if isinstance(c, Call)))
    raise TypeError(f"a responder returned {reply!r}; expected a step, a string or a list of Call")


def as_responder(responder: Responder | Reply) -> Responder:
    """A responder from a callable, or from a fixed step/string that answers every call the same."""
    if callable(responder):
        return responder
    step = as_step(responder)
    return lambda request: step


class Script:
    """Steps in order, one per call of the session; after the last, every call gets `after`.

    The default `after` says `SCRIPT_END_TEXT`, so a finished script never repeats an action by accident.
    """

    def __init__(self, steps: Iterable[Reply], after: Reply = SCRIPT_END_TEXT) -> None:
        self.steps: tuple[Step, ...] = tuple(as_step(step) for step in steps)
        self.after: Step = as_step(after)

    def __call__(self, request: ModelRequest) -> Step:
        """The step at this session's cursor."""
        index = request.call_index
        return self.steps[index] if index < len(self.steps) else self.after


class Echo:
    """Repeats the latest user message, for smoke tests and demos."""

    def __call__(self, request: ModelRequest) -> Step:
        """The text of the last user message, or an empty reply."""
        for message in reversed(request.messages):
            if message.get("role") == "user":
                return Say(content_text(message.get("content")))
        return Say("")


_JUDGED_USER_LINE = re.compile(r"^\[(\d+)\] user: (.*)$", re.M)


class Judge:
    """Plays the optional LLM judge (core/judge.py): reads the transcript it is sent and answers with the
    JSON object the judge is asked for.

    It blames the user at the first user message ("[n] user: ...") containing one of `user_faults`
    (case-insensitive), else answers `otherwise` ("agent", "tool" or "unclear") with no message.
    `reply` answers fixed text instead (a judge that breaks the answer form).
    """

    def __init__(self, user_faults: Sequence[str] = (), otherwise: str = "agent", reply: str | None = None) -> None:
        self.user_faults = tuple(fault.lower() for fault in user_faults)
        self.otherwise = otherwise
        self.reply = reply

    def __call__(self, request: ModelRequest) -> Step:
        """The verdict on the transcript in the request's last message."""
        if self.reply is not None:
            return Say(self.reply)
        transcript = content_text(request.messages[-1].get("content"))
        for line in _JUDGED_USER_LINE.finditer(transcript):
            if any(fault in line[2].lower() for fault in self.user_faults):
                evidence = f"the user wrote {line[2][:80]!r}"
                return Say(json.dumps({"blame": "user", "message_index": int(line[1]), "evidence": evidence}))
        evidence = "no message shows the user or a tool at fault"
        return Say(json.dumps({"blame": self.otherwise, "message_index": None, "evidence": evidence}))


X_PREFERENCE = (4, 0, 2, 6, 8, 1, 3, 5, 7)
O_PREFERENCE = (8, 1, 3, 5, 7, 0, 2, 6, 4)
_DECODER = json.JSONDecoder()
_PLAYED_RE = re.compile(r"\bplayed (?:cell |position )?(\d)\b")
_TAKEN = frozenset("XOxo")


def find_board(text: str) -> list[Any] | None:
    """The board of the last JSON object in `text` with a `"board"` key holding 9 cells."""
    end = len(text)
    while (key := text.rfind('"board"', 0, end)) != -1:
        start = text.rfind("{", 0, key)
        while start != -1:
            try:
                value, _ = _DECODER.raw_decode(text, start)
            except ValueError:
                value = None
            board = value.get("board") if isinstance(value, dict) else None
            if isinstance(board, list) and len(board) == 9:
                return board
            start = text.rfind("{", 0, start)
        end = key
    return None


def _calls_to(message: Mapping[str, Any], tool: str) -> list[tuple[str, int | None]]:
    """(call id, position) of each call to `tool` in an assistant message."""
    found = []
    for call in message.get("tool_calls") or ():
        function = call.get("function", {})
        if function.get("name") == tool:
            try:
                position = json.loads(function.get("arguments") or "{}").get("position")
            except (ValueError, AttributeError):
                position = None
            found.append((call.get("id", ""), position))
    return found


def _answered_position(calls: Sequence[tuple[str, int | None]], result: Mapping[str, Any]) -> int | None:
    """The position of the call a tool result answers: by `tool_call_id`, else the last call."""
    by_id = dict(calls)
    call_id = result.get("tool_call_id")
    if call_id in by_id:
        return by_id[call_id]
    return calls[-1][1] if calls else None


def _failed(result: str) -> bool:
    """A move's tool result is a failure when it shows no board or mentions an error."""
    return find_board(result) is None or "error" in result.lower()


class TicTacToePlayer:
    """Plays tic-tac-toe through a `make_move(position)` tool, deterministically.

    It reads the latest board in the conversation (the last JSON object with a `"board"` key, in any
    message but its own) and treats as taken also cells named as "played N" in later user messages and
    cells its own failed moves of this turn tried. Right after a successful move of its own, or when it
    may not call tools, it says so in text; otherwise it plays the first free cell of `preference`.
    """

    def __init__(self, preference: Sequence[int] = X_PREFERENCE, tool: str = "make_move") -> None:
        self.preference = tuple(preference)
        self.tool = tool

    def __call__(self, request: ModelRequest) -> Step:
        """A move, or a short text about the last one."""
        messages = request.messages
        last_move = self._answered_move(messages)
        if last_move is not None:
            return Say(f"I played {last_move}. Your move.")
        if request.tool_choice == "none" or not self._offered(request.tools):
            return Say("Your move.")
        taken = self._taken(messages)
        for cell in self.preference:
            if cell not in taken:
                return Call(self.tool, {"position": cell})
        return Say("There is no free cell left.")

    def _offered(self, tools: Sequence[Mapping[str, Any]]) -> bool:
        return any(tool.get("function", tool).get("name") == self.tool for tool in tools)

    def _answered_move(self, messages: Sequence[Mapping[str, Any]]) -> int | None:
        """The position of its own move if the last message is that move's successful result."""
        if not messages or messages[-1].get("role") != "tool":
            return None
        if _failed(content_text(messages[-1].get("content"))):
            return None
        for message in reversed(messages):
            if message.get("role") == "assistant":
                return _answered_position(_calls_to(message, self.tool), messages[-1])
        return None

    def _taken(self, messages: Sequence[Mapping[str, Any]]) -> set[int]:
        """Cells it believes occupied: latest board, later "played N" claims, this turn's failed tries."""
        taken: set[int] = set()
        board_at = -1
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") == "assistant":
                continue
            board = find_board(content_text(message.get("content")))
            if board is not None:
                taken = {cell for cell, mark in enumerate(board) if mark in _TAKEN}
                board_at = index
                break
        for message in messages[board_at + 1 :]:
            if message.get("role") == "user":
                taken.update(int(n) for n in _PLAYED_RE.findall(content_text(message.get("content"))))
        return taken | self._failed_this_turn(messages)

    def _failed_this_turn(self, messages: Sequence[Mapping[str, Any]]) -> set[int]:
        """Positions its own moves tried since the last user or system message, where the result failed."""
        turn_start = 0
        for index, message in enumerate(messages):
            if message.get("role") in ("user", "system"):
                turn_start = index + 1
        failed: set[int] = set()
        calls: list[tuple[str, int | None]] = []
        for message in messages[turn_start:]:
            if message.get("role") == "assistant":
                calls = _calls_to(message, self.tool)
            elif message.get("role") == "tool" and _failed(content_text(message.get("content"))):
                position = _answered_position(calls, message)
                if position is not None:
                    failed.add(position)
        return failed


def tictactoe_players() -> dict[str, Responder]:
    """The `tictactoe` preset: "policy" plays X from the centre, "user" plays O on edges and corners.

    With an environment that lets each side move in turn, X wins on its fourth move (cells 4, 0, 2, 6
    against O's 8, 1, 3).
    """
    return {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}


def support_desk_players(task_id: str = "sd-01", *, tell_facts: bool = True) -> dict[str, Responder]:
    """The `support-desk` preset: a by-the-book agent and its customer, scripted for one shipped task.

    The customer states its goal, identifies itself when asked, says yes to each proposed change and
    ends with ###STOP###; the agent authenticates, proposes each expected action, makes it after the
    yes, and tells the required facts. Reward 1; with `tell_facts=False` the agent keeps the facts to
    itself and the episode scores 0 on the `facts` component.
    """
    from sparring.envs.support_desk.env import STOP_TOKEN, resolve_task

    task = resolve_task({"env_seed": {"task_id": task_id}})
    if "email" in task.known:
        find, identify = Call("find_user_id_by_email", {"email": task.known["email"]}), f"It's {task.known['email']}."
    else:
        find = Call("find_user_id_by_name_zip", dict(task.known))
        identify = f"I'm {task.known['first_name']} {task.known['last_name']}, zip {task.known['zip']}."
    facts = " ".join(fact[0] for fact in task.required_facts) if tell_facts else ""
    policy: list[Reply] = [Say("Hello! To find your account, please give me your email, or your name and zip."), find]
    user: list[Reply] = [Say(f"Hi. {task.instructions}"), Say(identify)]
    for action in task.expected_actions:
        if action.name == "transfer_to_human_agents":
            policy.append(Call(action.name, action.arguments))
            continue
        policy += [Say(f"I will call {action.name} with {json.dumps(action.arguments)}. Shall I go ahead?")]
        policy += [Call(action.name, action.arguments)]
        user.append(Say("Yes, please go ahead."))
    policy.append(Say(f"All done. {facts}".strip()))
    user.append(Say(f"Thank you, that's all. {STOP_TOKEN}"))
    return {"policy": Script(policy), "user": Script(user)}


CALENDAR_REQUEST = re.compile(r"event (\d+), ([^,]+), for (\d+) minutes, ([^.]*?)\.(?:\s|$)", re.IGNORECASE)


class CalendarPlanner:
    """The calendar assistant, deterministically: it reads every request the user made (the wording of
    `sparring tasks calendar` and the default task) and places each event at the earliest quarter hour
    that meets its constraint without overlapping, `at` constraints first.

    Printed form: every reply is the calendar as a JSON list. Tools form (tools offered): it adds the
    events it has not added yet and moves those the new plan puts elsewhere, then says so. `shift`
    minutes are added to every start (to script a wrong calendar).
    """

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift

    def __call__(self, request: ModelRequest) -> Step:
        requests = _calendar_requests(request.messages)
        calendar = _plan(requests, self.shift)
        if not request.tools:
            return Say("Here is your calendar:\n" + json.dumps(calendar))
        starts: dict[int, str] = {}  # where this planner's own calls put each event so far
        for message in request.messages:
            for call in message.get("tool_calls") or ():
                if call.get("function", {}).get("name") in ("add_event", "move_event"):
                    arguments = json.loads(call["function"]["arguments"])
                    starts[arguments["event_id"]] = arguments["start_time"]
        changes = [
            Call("add_event", event)
            if event["event_id"] not in starts
            else Call("move_event", {"event_id": event["event_id"], "start_time": event["start_time"]})
            for event in calendar
            if starts.get(event["event_id"]) != event["start_time"]
        ]
        if changes and request.messages[-1].get("role") != "tool":
            return Calls(tuple(changes))
        return Say(f"Your calendar has {len(calendar)} events.")


class CalendarRequester:
    """The calendar user: says the request the environment shows it, and stops when told all are made
    (or when it is shown none: a NeMo Gym row, already asked)."""

    def __call__(self, request: ModelRequest) -> Step:
        shown = content_text(request.messages[-1].get("content"))
        _, found, rest = shown.partition("(Your next request: ")
        if not found:
            return Say("###STOP###")
        return Say(rest.partition(" Write it to the assistant")[0])


def _calendar_requests(messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, int, str]]:
    """(event id, name, minutes, constraint) for each request in the user's messages, first mention wins."""
    found: dict[int, tuple[int, str, int, str]] = {}
    for message in messages:
        if message.get("role") == "user":
            for match in CALENDAR_REQUEST.finditer(content_text(message.get("content"))):
                event_id = int(match[1])
                found.setdefault(event_id, (event_id, match[2].strip(), int(match[3]), match[4].strip()))
    return sorted(found.values())


def _plan(requests: Sequence[tuple[int, str, int, str]], shift: int) -> list[dict[str, Any]]:
    """Earliest quarter-hour placement, 10am-4pm, `at` events first, then between / before / after / free."""
    from sparring.envs.calendar.scoring import clock, constraint_holds

    rank = {"at": 0, "between": 1, "before": 2, "after": 3}
    order = sorted(requests, key=lambda r: (rank.get(r[3].partition(" ")[0], 4), r[0]))
    busy: list[tuple[int, int]] = []
    placed: dict[int, dict[str, Any]] = {}
    for event_id, name, duration, constraint in order:
        wanted = None if constraint.startswith("any") else constraint
        for start in range(10 * 60, 16 * 60 - duration + 1, 15):
            end = start + duration
            if constraint_holds(wanted, start, end) and all(end <= s or start >= e for s, e in busy):
                busy.append((start, end))
                placed[event_id] = {
                    "event_id": event_id,
                    "event_name": name,
                    "start_time": clock(start + shift),
                    "duration": duration,
                }
                break
    return [placed[i] for i in sorted(placed)]


def calendar_players(shift: int = 0) -> dict[str, Responder]:
    """The `calendar` preset: a planner that schedules every request correctly (reward 1 on the default task
    and on generated ones it can place), and a user that makes the requests as shown, then stops.
    With `shift` the planner moves every event by that many minutes (e.g. 360: out of the day, reward 0).
    """
    return {"policy": CalendarPlanner(shift), "user": CalendarRequester()}


PRESETS: dict[str, Callable[[], dict[str, Responder]]] = {
    "tictactoe": tictactoe_players,
    "calendar": calendar_players,
    "support-desk": support_desk_players,
    "echo": lambda: {"policy": Echo()},
}
"""Responder sets by name for the CLI and the child process; unknown model names go to "policy"."""
