"""One chat call through the gateway: what is added to the agent's request, and taken out of the reply.

The agent's body goes on unchanged except for `model` (the policy the gateway serves), sampling
defaults it did not set, the session's cap on `max_tokens`, and what the ledger needs:
`return_token_ids`, `logprobs` and, when streaming, the usage chunk (to check that every sampled token
arrived). Whatever the gateway added is removed from the reply, so the agent sees vLLM's plain OpenAI
shape; what the agent asked for itself stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sparring.gateway.history import message_errors

MAX_CHOICES = 16


class BadCall(ValueError):
    """A chat request the gateway refuses before it reaches the model (answered 422, naming the field)."""


@dataclass(frozen=True, slots=True)
class Added:
    """Which reply fields exist only because the gateway asked for them."""

    token_ids: bool
    logprobs: bool
    usage: bool


def prepare(
    body: Any, model: str, defaults: dict[str, Any], max_tokens_cap: int | None
) -> tuple[dict[str, Any], Added]:
    """The body to send upstream, and what was added to it; `BadCall` for a malformed request."""
    if not isinstance(body, dict):
        raise BadCall("the request body must be a JSON object")
    problem = message_errors(body.get("messages"))
    if problem:
        raise BadCall(problem)
    n = body.get("n", 1)
    if n is not None and (type(n) is not int or not 1 <= n <= MAX_CHOICES):
        raise BadCall(f"n: must be an integer from 1 to {MAX_CHOICES}, got {n!r}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadCall(f"stream: must be true or false, got {stream!r}")
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        raise BadCall("tools: must be a list of tool objects")
    upstream = {**defaults, **body, "model": model}
    if max_tokens_cap is not None:
        present = [name for name in ("max_tokens", "max_completion_tokens") if isinstance(upstream.get(name), int)]
        for name in present:
            upstream[name] = min(upstream[name], max_tokens_cap)
        if not present:
            upstream["max_tokens"] = max_tokens_cap
    added = Added(
        token_ids=not body.get("return_token_ids"),
        logprobs=not body.get("logprobs"),
        usage=stream and not (body.get("stream_options") or {}).get("include_usage"),
    )
    upstream["return_token_ids"] = True
    upstream["logprobs"] = True
    if stream:
        upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return upstream, added


@dataclass(slots=True)
class Choice:
    """One completion: the assistant message the agent got, and the exact tokens behind it."""

    index: int
    message: dict[str, Any]
    token_ids: list[int] | None
    logprobs: list[float]
    finish_reason: str


@dataclass(slots=True)
class Answer:
    """A whole reply as the ledger needs it."""

    prompt_ids: list[int] | None
    choices: list[Choice]
    completion_tokens: int | None = None
    """The server's own count (usage), when it sent one: every sampled token must have arrived."""

    def token_problem(self) -> str | None:
        """Why this reply cannot go into a ledger exactly (missing ids, logprobs, tokens), or None."""
        if self.prompt_ids is None:
            return "the policy server returned no prompt token ids; the gateway needs vLLM (return_token_ids)"
        for choice in self.choices:
            if choice.token_ids is None:
                return f"choice {choice.index}: the policy server returned no completion token ids"
            if len(choice.logprobs) != len(choice.token_ids):
                return f"choice {choice.index}: {len(choice.token_ids)} token ids but {len(choice.logprobs)} logprobs"
        sampled = sum(len(choice.token_ids or ()) for choice in self.choices)
        if self.completion_tokens is not None and sampled != self.completion_tokens:
            return f"{sampled} token ids arrived but the server reports {self.completion_tokens} completion tokens"
        return None


def _logprob_values(logprobs: Any) -> list[float]:
    content = (logprobs or {}).get("content") or ()
    return [entry["logprob"] for entry in content]


def take_reply(data: dict[str, Any], added: Added) -> Answer:
    """Read the token data out of a non-streamed reply, and remove from it what the gateway added."""
    prompt_ids = data.pop("prompt_token_ids", None) if added.token_ids else data.get("prompt_token_ids")
    choices = []
    for choice in data.get("choices") or ():
        token_ids = choice.pop("token_ids", None) if added.token_ids else choice.get("token_ids")
        logprobs = _logprob_values(choice.get("logprobs"))
        if added.logprobs:
            choice["logprobs"] = None
        message = choice.get("message") or {}
        choices.append(
            Choice(
                choice.get("index", len(choices)), message, token_ids, logprobs, choice.get("finish_reason") or "stop"
            )
        )
    usage = data.get("usage") or {}
    return Answer(prompt_ids, sorted(choices, key=lambda c: c.index), usage.get("completion_tokens"))


@dataclass(slots=True)
class _Partial:
    """One choice of a stream, put together chunk by chunk."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str = "stop"
    saw_ids: bool = False


class StreamReader:
    """Reads a vLLM chat stream event by event: collects the token data, forwards the rest unchanged."""

    def __init__(self, added: Added) -> None:
        self.added = added
        self.prompt_ids: list[int] | None = None
        self.completion_tokens: int | None = None
        self._choices: dict[int, _Partial] = {}

    def event(self, data: bytes) -> bytes | None:
        """The event's bytes for the agent (None: drop it), after taking its token data."""
        if data.strip() == b"[DONE]":
            return data
        chunk = orjson.loads(data)
        if "prompt_token_ids" in chunk:
            if self.prompt_ids is None:
                self.prompt_ids = chunk["prompt_token_ids"]
            if self.added.token_ids:
                del chunk["prompt_token_ids"]
        usage = chunk.get("usage")
        if usage is not None:
            self.completion_tokens = usage.get("completion_tokens")
            if self.added.usage:
                if not chunk.get("choices"):
                    return None
                chunk.pop("usage")
        for choice in chunk.get("choices") or ():
            self._take(choice)
        return orjson.dumps(chunk)

    def _take(self, choice: dict[str, Any]) -> None:
        partial = self._choices.setdefault(choice.get("index", 0), _Partial())
        ids = choice.pop("token_ids", None) if self.added.token_ids else choice.get("token_ids")
        if ids is not None:
            partial.token_ids += ids
            partial.saw_ids = True
        logprobs = choice.get("logprobs")
        if logprobs:
            partial.logprobs += _logprob_values(logprobs)
            if self.added.logprobs:
                choice["logprobs"] = None
        delta = choice.get("delta") or {}
        if delta.get("content"):
            partial.content.append(delta["content"])
        for call in delta.get("tool_calls") or ():
            slot = partial.tool_calls.setdefault(
                call.get("index", len(partial.tool_calls)),
                {"id": None, "type": "function", "name": "", "arguments": ""},
            )
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["name"] += function.get("name") or ""
            slot["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            partial.finish_reason = choice["finish_reason"]

    def answer(self) -> Answer:
        """The whole reply, once the stream has ended."""
        choices = []
        for index in sorted(self._choices):
            partial = self._choices[index]
            message: dict[str, Any] = {"role": "assistant", "content": "".join(partial.content) or None}
            if partial.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": slot["id"],
                        "type": "function",
                        "function": {"name": slot["name"], "arguments": slot["arguments"]},
                    }
                    for _, slot in sorted(partial.tool_calls.items())
                ]
            token_ids = partial.token_ids if partial.saw_ids else None
            choices.append(Choice(index, message, token_ids, partial.logprobs, partial.finish_reason))
        return Answer(self.prompt_ids, choices, self.completion_tokens)
