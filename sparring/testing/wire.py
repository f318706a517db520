"""The scripted server's response bodies, in the shapes vLLM 0.32's OpenAI and token endpoints answer with.

Pure functions of what was generated: the server (`server`) decides what to generate, this module
only lays it out (errors are in `errors`). Logprobs are made up but deterministic (`fake_logprob`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sparring.testing.tokenizer import TOKEN_BYTES, TOKEN_STRINGS, VOCAB_SIZE, decode

# -- what was generated -----------------------------------------------------------------------------


class Completion:
    """One generated choice: its ids, why it ended, the parsed reply, and the weight versions of its ids."""

    __slots__ = ("content", "finish_reason", "ids", "text", "tool_calls", "weight_versions")

    def __init__(
        self,
        ids: list[int],
        finish_reason: str,
        content: str | None,
        tool_calls: list[dict[str, Any]],
        weight_versions: list[dict[str, Any]] | None = None,
    ) -> None:
        self.ids = ids
        self.finish_reason = finish_reason
        self.text = decode(ids, skip_special_tokens=True)
        self.content = self.text if content is None and not tool_calls else content
        self.tool_calls = tool_calls
        self.weight_versions = weight_versions if weight_versions is not None else []


def usage(prompt_tokens: int, completions: Iterable[Completion]) -> dict[str, int]:
    """OpenAI usage, in the key order the chat and completions endpoints use."""
    generated = sum(len(completion.ids) for completion in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated}


def fake_logprob(token_id: int, position: int) -> float:
    """A fake but deterministic log-probability in [-0.5, -0.01]."""
    return -((token_id * 7 + position * 13) % 50 + 1) / 100


def _top(token_id: int, logprob: float, count: int) -> list[tuple[int, float]]:
    """The sampled token first, then made-up runners-up, each one nat less likely."""
    return [((token_id + k) % VOCAB_SIZE, logprob - k) for k in range(count)]


def chat_logprobs(ids: list[int], top: int, start: int = 0) -> dict[str, Any]:
    """OpenAI chat `logprobs`: one entry per completion id (`start`: the position of the first)."""
    content = []
    for position, token_id in enumerate(ids, start):
        logprob = fake_logprob(token_id, position)
        alternatives = [
            {"token": TOKEN_STRINGS[t], "logprob": lp, "bytes": TOKEN_BYTES[t]}
            for t, lp in _top(token_id, logprob, top)
        ]
        content.append(
            {
                "token": TOKEN_STRINGS[token_id],
                "logprob": logprob,
                "bytes": TOKEN_BYTES[token_id],
                "top_logprobs": alternatives,
            }
        )
    return {"content": content}


def completion_logprobs(ids: list[int], top: int) -> dict[str, Any]:
    """Legacy completions `logprobs`: parallel lists, top alternatives as {token: logprob}."""
    tokens = [TOKEN_STRINGS[t] for t in ids]
    logprobs = [fake_logprob(t, position) for position, t in enumerate(ids)]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=0)) if tokens else []
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": [
            {TOKEN_STRINGS[t]: lp for t, lp in _top(token_id, logprob, max(top, 1))}
            for token_id, logprob in zip(ids, logprobs, strict=True)
        ],
        "text_offset": offsets,
    }


def generate_logprobs(ids: list[int], count: int, start: int = 0) -> dict[str, Any]:
    """`/inference/v1/generate` logprobs: token ids, not strings; `top_logprobs` is a list of `count`
    entries, the sampled token first; ranks count from 1."""
    content = []
    for position, token_id in enumerate(ids, start):
        logprob = fake_logprob(token_id, position)
        ranked = [
            {"token_id": t, "logprob": lp, "rank": rank}
            for rank, (t, lp) in enumerate(_top(token_id, logprob, count), 1)
        ]
        content.append({"token_id": token_id, "logprob": logprob, "rank": 1, "top_logprobs": ranked})
    return {"content": content}


# -- /v1/chat/completions and /v1/completions --------------------------------------------------------


def chat_body(
    response_id: str,
    created: int,
    model: str,
    body: Mapping[str, Any],
    prompt_ids: list[int],
    completions: Sequence[Completion],
) -> dict[str, Any]:
    """A non-streaming chat completion."""
    choices = []
    for index, completion in enumerate(completions):
        message = {"role": "assistant", "content": completion.content, "tool_calls": completion.tool_calls}
        logprobs = chat_logprobs(completion.ids, body.get("top_logprobs") or 0) if body.get("logprobs") else None
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
        }
        if body.get("return_token_ids"):
            choice["token_ids"] = completion.ids
        choices.append(choice)
    response: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(len(prompt_ids), completions),
    }
    if body.get("return_token_ids"):
        response["prompt_token_ids"] = prompt_ids
    return response


def chat_chunks(
    response_id: str,
    created: int,
    model: str,
    body: Mapping[str, Any],
    prompt_ids: list[int],
    completions: Sequence[Completion],
) -> list[dict[str, Any]]:
    """vLLM's stream: per choice a role chunk (the prompt ids on it), then one chunk per token, interleaved.

    Each token chunk carries its id and logprob; text arrives as it decodes (a character cut between
    tokens waits for its last byte); tool calls come whole on the choice's last token, as vLLM's
    parsers send them once the call is complete; the usage chunk follows when asked for.
    """
    head = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model}
    per_choice = [_choice_chunks(head, body, prompt_ids, i, c) for i, c in enumerate(completions)]
    chunks = [chunk for group in itertools.zip_longest(*per_choice) for chunk in group if chunk is not None]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**head, "choices": [], "usage": usage(len(prompt_ids), completions)})
    return chunks


def _choice_chunks(
    head: dict[str, Any], body: Mapping[str, Any], prompt_ids: list[int], index: int, completion: Completion
) -> list[dict[str, Any]]:
    with_ids = bool(body.get("return_token_ids"))
    logprobs = None
    if body.get("logprobs"):
        logprobs = chat_logprobs(completion.ids, body.get("top_logprobs") or 0)["content"]
    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    chunks = [{**head, "choices": [first], **({"prompt_token_ids": prompt_ids} if with_ids else {})}]
    shown = ""
    last = len(completion.ids) - 1
    for position, token_id in enumerate(completion.ids):
        delta: dict[str, Any] = {}
        if completion.tool_calls:
            if position == 0 and completion.content:
                delta["content"] = completion.content
            if position == last:
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(completion.tool_calls)]
        else:
            text = decode(completion.ids[: position + 1], skip_special_tokens=True)
            if position == last or not text.endswith("\ufffd"):
                delta["content"], shown = text[len(shown) :], text
        choice: dict[str, Any] = {
            "index": index,
            "delta": delta,
            "logprobs": {"content": logprobs[position : position + 1]} if logprobs is not None else None,
            "finish_reason": completion.finish_reason if position == last else None,
        }
        if with_ids:
            choice["token_ids"] = [token_id]
        chunks.append({**head, "choices": [choice]})
    if not completion.ids and completion.finish_reason == "abort":  # aborted before its first token
        ended: dict[str, Any] = {"index": index, "delta": {}, "logprobs": None, "finish_reason": "abort"}
        chunks.append({**head, "choices": [{**ended, **({"token_ids": []} if with_ids else {})}]})
    return chunks


def completion_body(
    response_id: str,
    created: int,
    model: str,
    body: Mapping[str, Any],
    prompt_ids: list[int],
    completion: Completion,
) -> dict[str, Any]:
    """A legacy (token-in) completion."""
    logprobs = body.get("logprobs")
    choice: dict[str, Any] = {
        "index": 0,
        "text": completion.text,
        "logprobs": None if logprobs is None else completion_logprobs(completion.ids, logprobs),
        "finish_reason": completion.finish_reason,
        "stop_reason": None,
    }
    if body.get("return_token_ids"):
        choice["token_ids"] = completion.ids
        choice["prompt_token_ids"] = prompt_ids
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(len(prompt_ids), [completion]),
    }


# -- /inference/v1/generate (token in, token out) ---------------------------------------------------


def _generate_usage(prompt_tokens: int, completions: Iterable[Completion], *, with_details: bool) -> dict[str, Any]:
    """vLLM's `UsageInfo`, in its own key order (total before completion)."""
    generated = sum(len(completion.ids) for completion in completions)
    info: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + generated,
        "completion_tokens": generated,
    }
    if with_details:
        info |= {"prompt_tokens_details": None, "completion_tokens_details": None}
    return info


def _generate_choice(
    index: int, completion: Completion, ids: list[int], logprobs: Any, last: bool, text: str | None
) -> dict[str, Any]:
    """A choice of the token endpoint: the whole output (`last` set) or one streamed delta."""
    choice: dict[str, Any] = {
        "index": index,
        "finish_reason": completion.finish_reason if last else None,
        "stop_reason": None,
        "token_ids": ids,
        "routed_experts": None,
        "sampling_mask": None,
        "weight_versions": completion.weight_versions if last else None,
    }
    if text is not None:
        choice["text"] = text
    choice["logprobs"] = logprobs
    return choice


def _output_logprobs(ids: list[int], top: int | None, text_mode: bool, start: int = 0) -> Any:
    """Logprobs of `ids` at `start` for `sampling_params.logprobs = top`: vLLM lists max(top, 1)
    candidates per token (the whole vocabulary for -1), as token ids, or in the chat shape for text."""
    if top is None:
        return None
    count = VOCAB_SIZE if top == -1 else max(top, 1)
    return chat_logprobs(ids, count, start) if text_mode else generate_logprobs(ids, count, start)


def generate_body(
    request_id: str,
    created: int,
    model: str,
    params: Mapping[str, Any],
    output_mode: str,
    prompt_ids: list[int] | None,
    prompt_tokens: int,
    completions: Sequence[Completion],
) -> dict[str, Any]:
    """`POST /inference/v1/generate` without streaming: every field of vLLM's `GenerateResponse`, nulls too."""
    text_mode = output_mode == "text"
    skip_special = params.get("skip_special_tokens", True)
    choices = [
        _generate_choice(
            index,
            completion,
            completion.ids,
            _output_logprobs(completion.ids, params.get("logprobs"), text_mode),
            True,
            decode(completion.ids, skip_special) if text_mode else None,
        )
        for index, completion in enumerate(completions)
    ]
    return {
        "request_id": request_id,
        "model": model,
        "created": created,
        "usage": _generate_usage(prompt_tokens, completions, with_details=True),
        "prompt_logprobs": None,
        "prompt_token_id_logprobs": None,
        "prompt_token_ids": prompt_ids,
        "mm_placeholders": None,
        "metrics": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "output_mode": output_mode,
        "choices": choices,
    }


def generate_chunks(
    request_id: str,
    params: Mapping[str, Any],
    output_mode: str,
    stream_options: Mapping[str, Any] | None,
    prompt_ids: list[int] | None,
    prompt_tokens: int,
    completions: Sequence[Completion],
) -> list[dict[str, Any]]:
    """`POST /inference/v1/generate` with `stream: true`: one chunk per token, choices interleaved.

    A choice's last token carries its finish reason and the weight-version spans of the whole output;
    an aborted choice ends with a chunk of no tokens that says "abort". The prompt ids (when asked
    for) ride on the first chunk; the usage chunk follows when `stream_options.include_usage` is set.
    """
    text_mode = output_mode == "text"
    skip_special = params.get("skip_special_tokens", True)
    per_choice = []
    for index, completion in enumerate(completions):
        ids = completion.ids
        steps: list[list[int]] = [[token_id] for token_id in ids]
        if completion.finish_reason == "abort" or not steps:
            steps.append([])
        deltas = []
        shown = ""
        for position, step in enumerate(steps):
            last = position == len(steps) - 1
            text = None
            if text_mode:  # a character cut between tokens waits for its last byte
                so_far = decode(ids[: position + len(step)], skip_special)
                text = ""
                if last or not so_far.endswith("\ufffd"):
                    text, shown = so_far[len(shown) :], so_far
            logprobs = _output_logprobs(step, params.get("logprobs"), text_mode, position)
            deltas.append(_generate_choice(index, completion, step, logprobs, last, text))
        per_choice.append(deltas)
    chunks = []
    for choice in (c for group in itertools.zip_longest(*per_choice) for c in group if c is not None):
        chunk: dict[str, Any] = {"request_id": request_id, "usage": None}
        if prompt_ids is not None:
            chunk["prompt_token_ids"], prompt_ids = prompt_ids, None
        chunk |= {"output_mode": output_mode, "choices": [choice]}
        chunks.append(chunk)
    if (stream_options or {}).get("include_usage"):
        chunks.append(
            {
                "request_id": request_id,
                "usage": _generate_usage(prompt_tokens, completions, with_details=False),
                "output_mode": output_mode,
                "choices": [],
            }
        )
    return chunks


# -- /v1/*/render ---------------------------------------------------------------------------------------

OUTPUT_KIND_DELTA = 1
OUTPUT_KIND_FINAL_ONLY = 2
_GREEDY_BELOW = 1e-5
"""vLLM samples greedily below this temperature, and then drops top_p, top_k and min_p."""


def rendered_sampling_params(body: Mapping[str, Any], max_tokens: int, logprobs: int | None) -> dict[str, Any]:
    """The `sampling_params` a render returns, with the fields and in the order a real vLLM 0.32 sends
    them (captured: the penalties, temperature, top_p and min_p always; n, top_k, seed only when set)."""

    def given(key: str, default: Any) -> Any:
        value = body.get(key)
        return default if value is None else value

    params: dict[str, Any] = {}
    if given("n", 1) != 1:
        params["n"] = body["n"]
    for key, default in (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0)):
        params[key] = float(given(key, default))
    temperature = float(given("temperature", 1.0))
    params["temperature"] = temperature
    if temperature >= _GREEDY_BELOW:
        params["top_p"] = float(given("top_p", 1.0))
        if given("top_k", 0) not in (0, -1):
            params["top_k"] = body["top_k"]
        params["min_p"] = float(given("min_p", 0.0))
    if body.get("seed") is not None:
        params["seed"] = body["seed"]
    stop = given("stop", [])
    params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    params["stop_token_ids"] = list(given("stop_token_ids", []))
    if body.get("ignore_eos"):
        params["ignore_eos"] = True
    params["max_tokens"] = max_tokens
    if logprobs is not None:
        params["logprobs"] = logprobs
    params["output_kind"] = OUTPUT_KIND_DELTA if body.get("stream") else OUTPUT_KIND_FINAL_ONLY
    params |= {"skip_clone": True, "bad_words": [], "skip_reading_prefix_cache": False}
    return params


def render_body(
    request_id: str,
    token_ids: list[int],
    sampling_params: dict[str, Any],
    body: Mapping[str, Any],
) -> dict[str, Any]:
    """A rendered request: every field of vLLM's `GenerateRequest`, ready to post to /inference/v1/generate."""
    stream = bool(body.get("stream"))
    return {
        "request_id": request_id,
        "token_ids": token_ids,
        "token_offsets": None,
        "features": None,
        "content_parts": None,
        "sampling_params": sampling_params,
        "model": body.get("model"),
        "reasoning_ended": None,
        "reasoning_parser_kwargs": None,
        "return_token_ids": None,
        "output_mode": "tokens",
        "stream": stream,
        "stream_options": body.get("stream_options") if stream else None,
        "cache_salt": body.get("cache_salt"),
        "priority": body.get("priority", 0),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
    }


# -- /metrics ---------------------------------------------------------------------------------------------

GAUGES: tuple[tuple[str, str], ...] = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_text(model: str, running: int, waiting: int, kv_cache_usage: float) -> str:
    """vLLM's scheduler gauges in Prometheus' text format, labelled as vLLM labels them (engine 0; the
    client library sorts label names)."""
    labels = f'{{engine="0",model_name="{model}"}}'
    lines = []
    for (name, help_text), value in zip(GAUGES, (running, waiting, kv_cache_usage), strict=True):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name}{labels} {float(value)!r}"]
    return "\n".join(lines) + "\n"
