"""The optional LLM judge of who made an episode fail: its prompt and the reading of its answer.

Pure functions, so the verify node (nodes/verify.py) only sends one request and reads one reply.
The judge sees what rules cannot: a user that quietly changed its goal, stopped after half of it,
or misread a fair agent. It is asked only where the rule checks leave the label `agent` (a failed,
scored episode no rule pinned on the user, a tool or the environment), because there a wrong label
costs most: an undetected broken user would be trained on as the policy's failure. Everywhere else
the rules have decided already: `none` was earned on the environment's state, `env` episodes are
aborted (never scored), and a rule fault is a fact seen in the transcript; a model's opinion does
not overrule it, and asking there would spend a model call per episode for nothing.

The judge can move `agent` to `user` or `tool`, never further. Its answer is one JSON object
(`ANSWER_SCHEMA`, sent as `response_format` so vLLM's guided decoding holds it to the form):
`{"blame": "user" | "agent" | "tool" | "unclear", "message_index": n | null, "evidence": "..."}`.
It becomes one reason, check `judge`, whose detail starts with the judge's model name; `user` and
`tool` are faults, `agent` and `unclear` notes. A judge that fails (unreachable, a malformed answer)
leaves the rules' verdict and adds a `judge_error` note; it never ends the episode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from sparring.core.attribution import Blame, JudgeVerdict, Reason, at, reason, text_of

MESSAGE_CHARS = 600
"""A message longer than this is cut for the judge (a support-desk policy document, a long tool result)."""
TRANSCRIPT_CHARS = 12_000
"""The transcript's budget: the first and the last messages are kept, the middle left out and counted."""
DETAIL_CHARS = 300
"""How much of the judge's evidence its reason keeps."""

FRAME = (
    "You judge one failed episode of an AI assistant talking with a simulated user, to say who made it fail.\n"
    "{instructions}\n"
    'Answer with one JSON object: {{"blame": "user" | "agent" | "tool" | "unclear", "message_index": the [n] '
    'of the message that shows it (or null), "evidence": one short sentence quoting or describing it}}. '
    '"agent" means the assistant. Say "unclear" when the transcript does not show whose fault it is.'
)

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "blame": {"type": "string", "enum": ["user", "agent", "tool", "unclear"]},
        "message_index": {"type": ["integer", "null"]},
        "evidence": {"type": "string"},
    },
    "required": ["blame", "message_index", "evidence"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "attribution", "schema": ANSWER_SCHEMA, "strict": True},
}


@with_config(ConfigDict(extra="forbid"))
class Answer(TypedDict):
    """The judge's answer, as `ANSWER_SCHEMA` says."""

    blame: Blame
    message_index: int | None
    evidence: str


_ANSWER = TypeAdapter(Answer)
_SEVERITY: dict[str, Literal["fault", "note"]] = {"user": "fault", "tool": "fault", "agent": "note", "unclear": "note"}


def judge_messages(instructions: str, record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The judge's chat: the frame with the environment's instructions, then the user's own instructions
    (its persona), the outcome, and the transcript in the policy's view with message numbers.

    `record` needs `messages` and `user_messages` in the record's shape, `status`, `stop_reason`,
    `reward` and `reward_components`.
    """
    user_messages = record.get("user_messages") or []
    persona = text_of(user_messages[0]) if user_messages and user_messages[0].get("role") == "system" else ""
    components = record.get("reward_components") or {}
    outcome = f"status {record.get('status')} ({record.get('stop_reason')}), reward {record.get('reward')}"
    if components:
        outcome += ", components " + ", ".join(f"{k} {v:g}" for k, v in components.items())
    body = (
        f"The simulated user's instructions:\n{_cut(persona) or '(none)'}\n\n"
        f"Outcome: {outcome}.\n\n"
        "Transcript (the assistant's view; [n] numbers the messages):\n" + transcript(record.get("messages") or [])
    )
    return [{"role": "system", "content": FRAME.format(instructions=instructions)}, {"role": "user", "content": body}]


def transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    """One line block per message, numbered as in the record; the middle left out beyond TRANSCRIPT_CHARS."""
    lines = [_line(index, message) for index, message in enumerate(messages)]
    if sum(len(line) for line in lines) <= TRANSCRIPT_CHARS:
        return "\n".join(lines)
    head: list[str] = []
    tail: list[str] = []
    budget = TRANSCRIPT_CHARS // 2
    for line in lines:
        if sum(map(len, head)) + len(line) > budget:
            break
        head.append(line)
    for line in reversed(lines[len(head) :]):
        if sum(map(len, tail)) + len(line) > budget:
            break
        tail.insert(0, line)
    left_out = len(lines) - len(head) - len(tail)
    return "\n".join([*head, f"[... {left_out} messages left out ...]", *tail])


def read_answer(text: str, model: str, messages: int) -> tuple[Reason, JudgeVerdict]:
    """The judge's reply as a reason and its verdict; a reply that is not the answer form is a `judge_error`.

    `messages` is the length of the policy's view, so `message_index` points at a real message or nowhere.
    """
    try:
        answer = _ANSWER.validate_python(_json_object(text), strict=True)
    except ValueError as exc:
        return judge_failed(model, f"the answer is not the JSON object asked for ({_problem(exc)}): {text[:120]!r}")
    index = answer["message_index"]
    where = at("messages", index) if index is not None and 0 <= index < messages else None
    evidence = " ".join(answer["evidence"].split())
    found = reason(
        "judge",
        "agent" if answer["blame"] == "unclear" else answer["blame"],
        f"{model}: {answer['blame']}: {evidence}"[:DETAIL_CHARS],
        where,
        _SEVERITY[answer["blame"]],
    )
    return found, {"model": model, "blame": answer["blame"], "error": None}


def judge_failed(model: str, error: str) -> tuple[Reason, JudgeVerdict]:
    """A judge that could not answer: a note, and the rules' verdict stands."""
    detail = f"{model}: no verdict: {error}"[:DETAIL_CHARS]
    return reason("judge_error", "agent", detail, None, "note"), {"model": model, "blame": None, "error": error}


def _json_object(text: str) -> Any:
    """The JSON object in the reply: all of it, or (a server without guided decoding) the braces in it."""
    stripped = text.strip()
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        start, end = stripped.find("{"), stripped.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object") from None
        try:
            return orjson.loads(stripped[start : end + 1])
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from None


def _problem(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        return f"{where}: {first['msg']}"
    return str(exc)


def _cut(text: str) -> str:
    flat = text.strip()
    return flat if len(flat) <= MESSAGE_CHARS else f"{flat[:MESSAGE_CHARS]}... ({len(flat) - MESSAGE_CHARS} more)"


def _line(index: int, message: Mapping[str, Any]) -> str:
    role, actor = message.get("role"), message.get("actor")
    if role == "tool":
        fault = f", fault {message['fault']}" if message.get("fault") else ""
        who = f"tool result of {message.get('name') or '?'} ({message.get('status') or 'unknown status'}{fault})"
    elif role == "system":
        who = "system prompt"
    elif role == "assistant":
        who = "assistant"
    else:
        who = "user" if actor == "user" else "environment"
    parts = [_cut(text_of(message))] if text_of(message).strip() else []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(f"calls {function.get('name')}({_cut(str(function.get('arguments') or ''))})")
    return f"[{index}] {who}: " + (" ".join(parts) or "(nothing)")
