"""A scripted OpenAI-compatible model server over real HTTP, shaped like vLLM's, for tests and benchmarks.

Replies come from responders (see `responders`), chosen per request by the `model` field; prompts and
replies go through the fixed template and byte tokenizer of `tokenizer`, so token ids stay consistent
across turns exactly as a ledger expects. Endpoints: `POST /v1/chat/completions` (with `n` choices,
each the responder's next step, and `stream: true` as vLLM's server-sent events, token ids included),
token-in `POST /v1/completions`, `GET /v1/models`, `GET /health`, `POST /tokenize`, `POST /detokenize`.

In the same event loop:

    async with FakeModelServer({"policy": Script([Call("make_move", {"position": 4})])}) as server:
        ...  # point a client at server.base_url

In a child process (a benchmark then measures only its own CPU): `with FakeModelProcess() as server:`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from http.client import responses
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from sparring.testing.responders import (
    Call,
    Calls,
    ContextFull,
    Cut,
    Echo,
    Fail,
    Hang,
    ModelRequest,
    Reply,
    Responder,
    Say,
    Step,
    as_responder,
    as_step,
    calendar_players,
    support_desk_players,
    tictactoe_players,
)
from sparring.testing.tokenizer import (
    IM_END_ID,
    TEMPLATES,
    TOKEN_BYTES,
    TOKEN_STRINGS,
    VOCAB_SIZE,
    Template,
    decode,
    encode,
    parse_prompt,
    render_assistant_body,
    render_messages,
)

PRESETS: dict[str, Callable[[], dict[str, Responder]]] = {
    "tictactoe": tictactoe_players,
    "calendar": calendar_players,
    "support-desk": support_desk_players,
    "echo": lambda: {"policy": Echo()},
}
"""Responder sets by name for the CLI and the child process; unknown model names go to "policy"."""

DESCRIPTION = (
    "Serve scripted models over an OpenAI/vLLM-compatible HTTP API until Ctrl-C. "
    "The first line printed is the base URL, e.g. http://127.0.0.1:PORT/v1."
)
DEFAULT_MAX_MODEL_LEN = 32768
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 16
"""The most completions (`n`) one chat request may ask for."""
"""vLLM's (and OpenAI's) default `max_tokens` for /v1/completions."""
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def error_body(message: str, err_type: str, status: int, param: str | None = None) -> dict[str, Any]:
    """An error in the shape vLLM's OpenAI server answers with."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def context_length_error(max_model_len: int, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    """vLLM's 400 body when prompt + max_tokens does not fit, with its own wording (`VLLMValidationError`)."""
    total = prompt_tokens + max_tokens
    message = (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} input tokens, "
        f"for a total of at least {total} tokens. Please reduce the length of the input prompt or the "
        f"number of requested output tokens. (parameter=input_tokens, value={prompt_tokens})"
    )
    return error_body(message, "BadRequestError", 400, "input_tokens")


def _failure_body(status: int) -> dict[str, Any]:
    """The default body of a scripted `Fail`, typed the way vLLM types server and client errors."""
    err_type = "InternalServerError" if status >= 500 else "BadRequestError"
    return error_body(responses.get(status, "Error"), err_type, status)


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class _Refusal(Exception):
    """An HTTP error answer decided while handling a request."""

    def __init__(self, status: int, body: Mapping[str, Any] | str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(text=self.body, status=self.status)
        return _json_response(self.body, self.status)


def _bad_request(message: str) -> _Refusal:
    return _Refusal(400, error_body(message, "BadRequestError", 400))


class _Completion:
    """What the scripted model generated for one call."""

    __slots__ = ("content", "finish_reason", "ids", "text", "tool_calls")

    def __init__(
        self, ids: list[int], finish_reason: str, content: str | None, tool_calls: list[dict[str, Any]]
    ) -> None:
        self.ids = ids
        self.finish_reason = finish_reason
        self.text = decode(ids, skip_special_tokens=True)
        self.content = self.text if content is None and not tool_calls else content
        self.tool_calls = tool_calls


def _logprob(token_id: int, position: int) -> float:
    """A fake but deterministic log-probability in [-0.5, -0.01]."""
    return -((token_id * 7 + position * 13) % 50 + 1) / 100


def _top(token_id: int, logprob: float, count: int) -> list[tuple[int, float]]:
    """The sampled token first, then made-up runners-up, each one nat less likely."""
    return [((token_id + k) % VOCAB_SIZE, logprob - k) for k in range(count)]


def _chat_logprobs(ids: list[int], top: int) -> dict[str, Any]:
    """OpenAI chat `logprobs`: one entry per completion id."""
    content = []
    for position, token_id in enumerate(ids):
        logprob = _logprob(token_id, position)
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


def _completion_logprobs(ids: list[int], top: int) -> dict[str, Any]:
    """Legacy completions `logprobs`: parallel lists, top alternatives as {token: logprob}."""
    tokens = [TOKEN_STRINGS[t] for t in ids]
    logprobs = [_logprob(t, position) for position, t in enumerate(ids)]
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


class FakeModelServer:
    """A scripted OpenAI/vLLM-compatible server on 127.0.0.1, run inside the caller's event loop.

    `responders` maps model names to responders (or to a fixed step or text). A request for another
    model goes to `fallback` if set, else gets vLLM's 404. `requests` records every request (path,
    model, body, headers) unless `record` is off, which long benchmarks want.
    """

    def __init__(
        self,
        responders: Mapping[str, Responder | Reply],
        *,
        fallback: str | None = None,
        template: Template = "chatml",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        latency_s: float = 0.0,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
        if fallback is not None and fallback not in responders:
            raise ValueError(f"fallback {fallback!r} is not one of the responders {list(responders)}")
        self.responders: dict[str, Responder] = {name: as_responder(r) for name, r in responders.items()}
        self.fallback = fallback
        self.template: Template = template
        self.max_model_len = max_model_len
        self.host = host
        self.port = port
        self.record = record
        self.latency_s = latency_s
        """Every model reply waits this long first (load tests: a model's time per call, no CPU spent)."""
        self.requests: list[dict[str, Any]] = []
        self._calls: dict[tuple[str, str | None], int] = {}
        self._ids = itertools.count()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The server root, e.g. `http://127.0.0.1:PORT` (for /health, /tokenize)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, `http://127.0.0.1:PORT/v1`."""
        return f"{self.url}/v1"

    def reset(self) -> None:
        """Forget recorded requests and every session's cursor."""
        self.requests.clear()
        self._calls.clear()

    def app(self) -> web.Application:
        """The aiohttp application (also usable with aiohttp's own test tools)."""
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat_completions),
                web.post("/v1/completions", self._completions),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.post("/tokenize", self._tokenize),
                web.post("/detokenize", self._detokenize),
            ]
        )
        return app

    async def start(self) -> None:
        """Bind (port 0 picks a free port, then `port` holds it) and start serving."""
        self._closing.clear()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Stop serving; requests still sleeping in a `Hang` wake up and finish first."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- endpoints --------------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.Response:
        try:
            model, body, responder = await self._accept(request)
            messages = body.get("messages") or []
            tools = body.get("tools") or []
            tool_choice = body.get("tool_choice") or ("auto" if tools else "none")
            prompt_ids = encode(render_messages(messages, tools, True, self.template))
            max_tokens = self._max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"), prompt_ids)
            steps = []
            for _ in range(self._num_choices(body.get("n"))):  # each choice is the responder's next step
                call = self._model_request(request, model, messages, tools, tool_choice, max_tokens, "chat")
                steps.append(await self._next_step(responder, call, len(prompt_ids)))
        except _Refusal as refusal:
            return refusal.response()
        parse_tools = bool(tools) and tool_choice != "none"
        completions = [self._generate(step, max_tokens, parse_tools) for step in steps]
        if body.get("stream"):
            return await self._stream(request, self._chat_chunks(model, body, prompt_ids, completions))
        return _json_response(self._chat_body(model, body, prompt_ids, completions))

    async def _completions(self, request: web.Request) -> web.Response:
        try:
            model, body, responder = await self._accept(request)
            if body.get("stream"):
                raise _bad_request("The scripted model server streams chat completions only; send stream=false.")
            prompt_ids = self._prompt_ids(body.get("prompt"))
            messages, tools = parse_prompt(decode(prompt_ids))
            max_tokens = self._max_tokens(body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS), prompt_ids)
            tool_choice = "auto" if tools else "none"
            call = self._model_request(request, model, messages, tools, tool_choice, max_tokens, "completions")
            step = await self._next_step(responder, call, len(prompt_ids))
        except _Refusal as refusal:
            return refusal.response()
        completion = self._generate(step, max_tokens, parse_tools=False)
        return _json_response(self._completion_body(model, body, prompt_ids, completion))

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "sparring",
                "root": name,
                "parent": None,
                "max_model_len": self.max_model_len,
            }
            for name in self.responders
        ]
        return _json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
        except _Refusal as refusal:
            return refusal.response()
        if "messages" in body:
            text = render_messages(
                body["messages"], body.get("tools"), body.get("add_generation_prompt", True), self.template
            )
        else:
            text = body.get("prompt", "")
        tokens = encode(text)
        return _json_response(
            {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens, "token_strs": None}
        )

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
        except _Refusal as refusal:
            return refusal.response()
        return _json_response({"prompt": decode(body.get("tokens", []))})

    # -- request handling -------------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            raise _bad_request(f"The request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise _bad_request("The request body must be a JSON object.")
        return body

    async def _accept(self, request: web.Request) -> tuple[str, dict[str, Any], Responder]:
        """Parse and record a generation request, and pick its responder."""
        body = await self._read_json(request)
        model = body.get("model") or ""
        if self.record:
            self.requests.append({"path": request.path, "model": model, "body": body, "headers": request.headers})
        responder = self.responders.get(model) or self.responders.get(self.fallback or "")
        if responder is None:
            raise _Refusal(404, error_body(f"The model `{model}` does not exist.", "NotFoundError", 404, "model"))
        return model, body, responder

    def _prompt_ids(self, prompt: Any) -> list[int]:
        """Token-in prompts: a list of ids (or a string, encoded)."""
        if isinstance(prompt, str):
            return encode(prompt)
        if isinstance(prompt, list) and prompt and all(type(t) is int and 0 <= t < VOCAB_SIZE for t in prompt):
            return prompt
        raise _bad_request(f"`prompt` must be a string or a non-empty list of token ids below {VOCAB_SIZE}.")

    def _max_tokens(self, requested: int | None, prompt_ids: list[int]) -> int:
        """The output budget, or vLLM's 400 when prompt + max_tokens exceeds `max_model_len`."""
        prompt_tokens = len(prompt_ids)
        if prompt_tokens >= self.max_model_len or prompt_tokens + (requested or 0) > self.max_model_len:
            raise _Refusal(400, context_length_error(self.max_model_len, prompt_tokens, requested or 0))
        return requested if requested is not None else self.max_model_len - prompt_tokens

    def _model_request(
        self,
        request: web.Request,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tool_choice: Any,
        max_tokens: int,
        endpoint: str,
    ) -> ModelRequest:
        """The responder's view of a call; taking it advances the cursor of (model, session)."""
        session = request.headers.get("X-Session-ID")
        call_index = self._calls.get((model, session), 0)
        self._calls[(model, session)] = call_index + 1
        return ModelRequest(
            model=model,
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            session_id=session,
            call_index=call_index,
            max_tokens=max_tokens,
            endpoint=endpoint,
        )

    async def _next_step(self, responder: Responder, call: ModelRequest, prompt_tokens: int) -> Step:
        """Ask the responder, then play out Hang, Fail and ContextFull; what is left is generated."""
        if self.latency_s:
            await self._sleep(self.latency_s)
        reply = responder(call)
        if inspect.isawaitable(reply):
            reply = await reply
        step = as_step(reply)
        while isinstance(step, Hang):
            await self._sleep(step.seconds)
            step = step.then
        if isinstance(step, Fail):
            raise _Refusal(step.status, _failure_body(step.status) if step.body is None else step.body)
        if isinstance(step, ContextFull):
            limit = max(1, min(self.max_model_len, prompt_tokens + (call.max_tokens or 0) - 1))
            raise _Refusal(400, context_length_error(limit, prompt_tokens, call.max_tokens or 0))
        return step

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _generate(self, step: Step, max_tokens: int, parse_tools: bool) -> _Completion:
        """The completion ids for a reply, cut to `max_tokens`; tool calls parsed only when complete."""
        text = step.text if isinstance(step, Say | Cut | Calls) else ""
        calls = (step,) if isinstance(step, Call) else step.calls if isinstance(step, Calls) else ()
        ids = encode(render_assistant_body(text, [(c.name, c.arguments) for c in calls]))
        if not isinstance(step, Cut):
            ids.append(IM_END_ID)
        if len(ids) > max_tokens or isinstance(step, Cut):
            return _Completion(ids[:max_tokens], "length", None, [])
        if parse_tools and calls:
            return _Completion(ids, "tool_calls", text or None, [self._tool_call(c) for c in calls])
        return _Completion(ids, "stop", None, [])

    def _tool_call(self, call: Call) -> dict[str, Any]:
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        return {
            "id": f"call_{next(self._ids):08x}",
            "type": "function",
            "function": {"name": call.name, "arguments": arguments},
        }

    def _usage(self, prompt_ids: list[int], *completions: _Completion) -> dict[str, int]:
        prompt, generated = len(prompt_ids), sum(len(completion.ids) for completion in completions)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    @staticmethod
    def _num_choices(n: Any) -> int:
        if n is None:
            return 1
        if type(n) is not int or not 1 <= n <= MAX_CHOICES:
            raise _bad_request(f"`n` must be an integer from 1 to {MAX_CHOICES}, got {n!r}.")
        return n

    def _chat_body(
        self, model: str, body: dict[str, Any], prompt_ids: list[int], completions: list[_Completion]
    ) -> dict[str, Any]:
        choices = []
        for index, completion in enumerate(completions):
            message = {"role": "assistant", "content": completion.content, "tool_calls": completion.tool_calls}
            logprobs = _chat_logprobs(completion.ids, body.get("top_logprobs") or 0) if body.get("logprobs") else None
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
            "id": f"chatcmpl-{next(self._ids):08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": self._usage(prompt_ids, *completions),
        }
        if body.get("return_token_ids"):
            response["prompt_token_ids"] = prompt_ids
        return response

    def _chat_chunks(
        self, model: str, body: dict[str, Any], prompt_ids: list[int], completions: list[_Completion]
    ) -> list[dict[str, Any]]:
        """vLLM's stream: per choice a role chunk (the prompt ids on it), then one chunk per token, interleaved.

        Each token chunk carries its id and logprob; text arrives as it decodes (a character cut between
        tokens waits for its last byte); tool calls come whole on the choice's last token, as vLLM's
        parsers send them once the call is complete; the usage chunk follows when asked for.
        """
        head = {"id": f"chatcmpl-{next(self._ids):08x}", "object": "chat.completion.chunk", "created": int(time.time())}
        head["model"] = model
        per_choice = [self._choice_chunks(head, body, prompt_ids, i, c) for i, c in enumerate(completions)]
        chunks = [chunk for group in itertools.zip_longest(*per_choice) for chunk in group if chunk is not None]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": self._usage(prompt_ids, *completions)})
        return chunks

    def _choice_chunks(
        self, head: dict[str, Any], body: dict[str, Any], prompt_ids: list[int], index: int, completion: _Completion
    ) -> list[dict[str, Any]]:
        with_ids = bool(body.get("return_token_ids"))
        logprobs = None
        if body.get("logprobs"):
            logprobs = _chat_logprobs(completion.ids, body.get("top_logprobs") or 0)["content"]
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
        return chunks

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        """Send chunks as server-sent events, then `data: [DONE]`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _completion_body(
        self, model: str, body: dict[str, Any], prompt_ids: list[int], completion: _Completion
    ) -> dict[str, Any]:
        logprobs = body.get("logprobs")
        choice: dict[str, Any] = {
            "index": 0,
            "text": completion.text,
            "logprobs": None if logprobs is None else _completion_logprobs(completion.ids, logprobs),
            "finish_reason": completion.finish_reason,
            "stop_reason": None,
        }
        if body.get("return_token_ids"):
            choice["token_ids"] = completion.ids
            choice["prompt_token_ids"] = prompt_ids
        return {
            "id": f"cmpl-{next(self._ids):08x}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": self._usage(prompt_ids, completion),
        }


# -- running it: CLI and child process ------------------------------------------------------------


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sparring fake-model` and `python -m sparring.testing.fake_model`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="tictactoe", help="scripted behaviour (default: %(default)s)"
    )
    parser.add_argument("--template", choices=TEMPLATES, default="chatml", help="chat template (default: %(default)s)")
    parser.add_argument(
        "--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN, help="context length (default: %(default)s)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds every model reply waits first (default: %(default)s)"
    )


async def serve(
    preset: str, template: Template, max_model_len: int, host: str, port: int, latency_s: float = 0.0
) -> None:
    """Serve a preset until cancelled; the first stdout line is the base URL, for whoever started us."""
    server = FakeModelServer(
        PRESETS[preset](),
        fallback="policy",
        template=template,
        max_model_len=max_model_len,
        host=host,
        port=port,
        record=False,
        latency_s=latency_s,
    )
    async with server:
        print(server.base_url, flush=True)
        await asyncio.Event().wait()


def run_server(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (the handler of `sparring fake-model`)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.preset, args.template, args.max_model_len, args.host, args.port, args.latency))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m sparring.testing.fake_model`: the same options as `sparring fake-model`."""
    parser = argparse.ArgumentParser(prog="python -m sparring.testing.fake_model", description=DESCRIPTION)
    add_server_arguments(parser)
    return run_server(parser.parse_args(argv))


class FakeModelProcess:
    """The server in a child process, so a benchmark's own CPU time excludes the server's.

    Starts `python -m sparring.testing.fake_model --port 0 --preset ...`, reads the bound URL from its
    first stdout line, and stops it (SIGINT, then kill) on exit.
    """

    def __init__(
        self,
        preset: str = "tictactoe",
        *,
        template: Template = "chatml",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        latency_s: float = 0.0,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(sorted(PRESETS))}")
        self.command = [
            sys.executable,
            "-m",
            "sparring.testing.fake_model",
            *("--preset", preset, "--template", template, "--max-model-len", str(max_model_len)),
            *("--host", host, "--port", str(port), "--latency", str(latency_s)),
        ]
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """The server root (base URL without `/v1`)."""
        return self.base_url.removesuffix("/v1")

    @property
    def pid(self) -> int | None:
        """The child's process id, e.g. to read its CPU time."""
        return self.process.pid if self.process else None

    def start(self) -> str:
        """Start the child and wait for its URL; returns the base URL."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, env=env, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(
                f"the fake model server did not start within {self.startup_timeout}s "
                f"(first line {line!r}); run {' '.join(self.command)} to see why"
            )
        self.base_url = line
        return line

    def stop(self) -> None:
        """Interrupt the child (as Ctrl-C would), killing it if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> FakeModelProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
