"""`show`: read one rollout record back, as a transcript on the terminal or as an HTML page.

Records hold token ids, not text. For display only, ids are decoded one by one: by the policy
model's local folder (`--tokenizer DIR`), by its server (`--tokenizer URL`: vLLM's `/detokenize`), or
by a tokenizer object a caller passes; training data is never rebuilt from text. Without any of
these the page shows the ids themselves.
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from langchain_core.messages import BaseMessage, ToolMessage

from sparring.core.errors import InputError
from sparring.core.jsonl import json_object
from sparring.core.messages import from_wire
from sparring.models.tito import TokenizerUnavailable, load_tokenizer
from sparring.views.transcript import format_message

REQUIRED_FIELDS = ("id", "status", "messages", "trajectory")


class RecordError(InputError):
    """A record file or index that cannot be shown; the message names the file, line and field."""


def load_record(path: str | Path, index: int) -> dict[str, Any]:
    """The `index`-th record (0-based; negative counts from the end) of a JSONL file of rollout records."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    lines = [(number, line) for number, line in enumerate(path.read_bytes().splitlines(), start=1) if line.strip()]
    if not lines:
        raise RecordError(f"{path}: no records in the file")
    if not -len(lines) <= index < len(lines):
        raise RecordError(
            f"{path}: --index {index} is out of range; the file has {len(lines)} records (0-{len(lines) - 1})"
        )
    number, line = lines[index]
    record = json_object(line, f"{path}:{number}", "a record", RecordError)
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise RecordError(f"{path}:{number}: not a rollout record (missing field {', '.join(missing)})")
    return record


def as_messages(wire_messages: Sequence[dict[str, Any]]) -> list[BaseMessage]:
    """Record messages as LangChain messages, keeping each one's actor, so the live transcript's format applies."""
    messages = []
    for wire in wire_messages:
        message = from_wire(wire)
        if wire.get("actor"):
            message.additional_kwargs["actor"] = wire["actor"]
        if isinstance(message, ToolMessage) and wire.get("status") in ("success", "error"):
            message.status = wire["status"]  # the transcript marks failed calls
        messages.append(message)
    return messages


def token_summary(record: dict[str, Any]) -> str:
    """One line on the token data: segments, tokens, trained tokens, their mean logprob, prefix mismatches."""
    trajectory = record["trajectory"]
    segments = trajectory.get("segments") or []
    total = sum(len(s["token_ids"]) for s in segments)
    trained = [lp for s in segments for lp, m in zip(s["logprobs"], s["loss_mask"], strict=True) if m]
    mean = f", mean logprob {sum(trained) / len(trained):.3f}" if trained else ""
    return (
        f"tokens: {len(segments)} segment(s), {total} tokens, {len(trained)} trained (loss mask 1){mean}, "
        f"{len(trajectory.get('calls') or [])} policy calls, {trajectory.get('prefix_mismatches', 0)} prefix mismatches"
    )


def attribution_lines(record: dict[str, Any]) -> list[str]:
    """Who made the episode fail (the record's `attribution`), then each reason: its check, whom it blames,
    whether it decided the label (fault) or explains (note), where it was seen, and what."""
    attribution = record.get("attribution")
    if not isinstance(attribution, dict):
        return ["attribution: none recorded (a record written before records had one)"]
    judge = attribution.get("judge")
    asked = ""
    if isinstance(judge, dict):
        answer = judge.get("blame") or f"no verdict ({judge.get('error')})"
        asked = f"  (judge {judge.get('model')}: {answer})"
    lines = [f"attribution: {attribution.get('label')}{asked}"]
    for found in attribution.get("reasons") or ():
        where = found.get("where")
        place = f" at {where['view']}[{where['index']}]" if isinstance(where, dict) else ""
        lines.append(
            f"  - {found.get('check')} ({found.get('actor')}, {found.get('severity')}){place}: {found.get('detail')}"
        )
    return lines


def transcript_lines(record: dict[str, Any], view: str = "policy") -> list[str]:
    """The record as the live transcript prints it, framed by its outcome and its attribution."""
    lines = [
        f"episode {record['id']}  env {record.get('env')}  task {record.get('task_id')}  "
        f"status {record['status']} ({record.get('stop_reason')})  reward {record.get('reward')}",
        *attribution_lines(record),
        "",
    ]
    history = record["messages"] if view == "policy" else record.get("user_messages") or []
    for message in as_messages(history):
        lines.extend([format_message(message, view=view), ""])
    if record.get("error"):
        lines.append(f"error: {record['error'].get('type')}: {record['error'].get('message')}")
    lines.append(
        f"{record.get('num_turns', 0)} turns, {record.get('num_policy_calls', 0)} policy calls, "
        f"{record.get('num_user_calls', 0)} user calls, {(record.get('timing') or {}).get('wall_s', 0):.2f} s"
    )
    lines.append(token_summary(record))
    return lines


class Decoder(Protocol):
    """Anything with a Hugging Face tokenizer's `decode` (e.g. the scripted server's `FakeTokenizer`)."""

    def decode(self, ids: list[int], /) -> str: ...


def token_decoder(source: str | Decoder | None) -> Callable[[int], str] | None:
    """Id -> text for display: a tokenizer object, a local model folder, or a model server's URL; None shows ids."""
    if not source:
        return None
    if not isinstance(source, str):
        return lambda token_id: source.decode([token_id])
    if source.startswith(("http://", "https://")):
        return server_decoder(source)
    if not Path(source).is_dir():
        raise RecordError(
            f"--tokenizer {source}: no such folder (pass the policy model's local folder, or its server's URL)"
        )
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerUnavailable as exc:
        raise RecordError(str(exc)) from None
    return lambda token_id: tokenizer.decode([token_id])


def server_decoder(url: str, timeout_s: float = 10.0) -> Callable[[int], str]:
    """Id -> text through a vLLM server's `/detokenize` (one request per distinct id, for display only).

    `url` is the server's root or its OpenAI base URL (ending in /v1). One id is decoded at once, so
    a server that cannot is reported here, not half-way through a page.
    """
    root = url.rstrip("/").removesuffix("/v1")

    @functools.cache
    def decode(token_id: int) -> str:
        request = urllib.request.Request(
            f"{root}/detokenize",
            data=orjson.dumps({"tokens": [token_id]}),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                text = orjson.loads(response.read()).get("prompt")
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
            raise RecordError(f"--tokenizer {url}: {root}/detokenize did not decode token {token_id}: {exc}") from None
        if not isinstance(text, str):
            raise RecordError(f"--tokenizer {url}: {root}/detokenize answered without a `prompt` text")
        return text

    decode(0)
    return decode
