"""A scripted OpenAI-compatible model server over real HTTP, shaped like vLLM 0.32's, for tests and benchmarks.

Replies come from responders (see `responders`), chosen per request by the `model` field; prompts and
replies go through the fixed template and byte tokenizer of `tokenizer`, so token ids stay consistent
across turns exactly as a ledger expects. Requests run through `engine` (pauses, token pacing, weight
versions) and are answered in vLLM's shapes (`wire`).

Endpoints, as vLLM serves them (the scale-out ones in `scale_out`, the dev-mode and LoRA ones in
`control`):
- always: `POST /v1/chat/completions` (`n` choices, each the responder's next step; `stream: true`
  as server-sent events, token ids included), token-in `POST /v1/completions`, `GET /v1/models`,
  `GET /health`, `POST /tokenize`, `POST /detokenize`, `GET /metrics` (running and waiting requests,
  KV-cache usage);
- scale-out (`vllm serve --enable-scale-out`; off: vLLM's 403): `POST /inference/v1/generate` (token
  ids in; per choice token ids, logprobs by id and `weight_versions` spans out),
  `POST /v1/chat/completions/render` and `POST /v1/completions/render` (prompt ids made on the
  server), `POST /inference/v1/abort_requests`;
- dev mode (`VLLM_SERVER_DEV_MODE=1`; off: 404): `POST /pause?mode=abort|wait|keep`, `POST /resume`,
  `GET /is_paused`, `POST /update_weight_version`, `GET /weight_info`, `POST /reset_prefix_cache`,
  `POST /abort_requests`;
- runtime LoRA (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`; off: 404): `POST /v1/load_lora_adapter`,
  `POST /v1/unload_lora_adapter`; a loaded adapter is a model name in /v1/models and in requests.

In the same event loop:

    async with FakeModelServer({"policy": Script([Call("make_move", {"position": 4})])}) as server:
        ...  # point a client at server.base_url

In a child process (a benchmark then measures only its own CPU): `with FakeModelProcess() as server:`.
"""

from __future__ import annotations

import inspect
import itertools
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from sparring.testing import wire
from sparring.testing.engine import (
    DEFAULT_KV_CACHE_TOKENS,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_WEIGHT_VERSION,
    Emitted,
    Job,
    ScriptedEngine,
    TokenGate,
)
from sparring.testing.errors import (
    METHOD_NOT_ALLOWED,
    ROUTE_NOT_FOUND,
    Refusal,
    bad_request,
    context_length_error,
    failure_body,
    json_response,
    model_not_found,
)
from sparring.testing.responders import (
    Call,
    Calls,
    ContextFull,
    Cut,
    Fail,
    Hang,
    ModelRequest,
    Reply,
    Responder,
    Say,
    Step,
    as_responder,
    as_step,
)
from sparring.testing.tokenizer import (
    IM_END_ID,
    TEMPLATES,
    VOCAB_SIZE,
    Template,
    decode,
    encode,
    parse_prompt,
    render_assistant_body,
    render_messages,
)
from sparring.testing.wire import Completion

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""vLLM's (and OpenAI's) default `max_tokens` for /v1/completions."""
MAX_CHOICES = 16
"""The most completions (`n`) one request may ask for (the scripted server's `max_num_seqs`)."""


@web.middleware
async def _fastapi_routing_errors(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Unknown paths and methods answer as vLLM's FastAPI app does, so a client probing an endpoint the
    server lacks sees what a real server without it would send."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return json_response(ROUTE_NOT_FOUND, 404)
    except web.HTTPMethodNotAllowed:
        return json_response(METHOD_NOT_ALLOWED, 405)


@dataclass(frozen=True, slots=True)
class Target:
    """Who answers a request: the name it used, the responder, and whose script cursor it advances."""

    model: str
    cursor: str
    responder: Responder
    adapter: str | None = None


@dataclass(slots=True)
class GenerationCall:
    """A parsed generation request, whatever endpoint it came by."""

    target: Target
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_choice: Any
    prompt_ids: list[int]
    max_tokens: int
    endpoint: str
    request_id: str | None
    """The server's id for it (what `/abort_requests` takes), when the client named it or the endpoint makes one."""
    choices: int = 1
    parse_tools: bool = False
    partial: list[int] = field(default_factory=list)
    """Reply tokens the prompt already ends with (the token endpoint continues them)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """The ids a step generates, before the engine lets them out."""

    ids: list[int]
    cut: bool
    text: str
    calls: tuple[Call, ...]


class FakeModelServer:
    """A scripted OpenAI/vLLM-compatible server on 127.0.0.1, run inside the caller's event loop.

    `responders` maps model names to responders (or to a fixed step or text). A request for another
    model goes to `fallback` if set, else gets vLLM's 404. `requests` records every generation request
    (path, model, body, headers, and the LoRA adapter that served it) unless `record` is off, which
    long benchmarks want. `engine` holds the pause state and the current weight version.

    The base model (what the token endpoint and render serve when a request names no model, and what
    adapters apply to) is `fallback` if set, else the first responder. A loaded adapter answers with
    `adapters[name]` if given, else with the base model's responder and its script cursor, so an
    episode that moves to new weights goes on where it was.
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
        token_latency_s: float = 0.0,
        token_gate: TokenGate | None = None,
        weight_version: str = DEFAULT_WEIGHT_VERSION,
        scale_out: bool = True,
        dev_mode: bool = True,
        lora: bool = True,
        adapters: Mapping[str, Responder | Reply] | None = None,
        kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS,
        max_num_seqs: int | None = None,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
        if fallback is not None and fallback not in responders:
            raise ValueError(f"fallback {fallback!r} is not one of the responders {list(responders)}")
        clash = sorted(set(adapters or ()) & set(responders))
        if clash:
            raise ValueError(f"adapter names {clash} are also base models; vLLM refuses such adapters")
        self.responders: dict[str, Responder] = {name: as_responder(r) for name, r in responders.items()}
        self.adapter_responders: dict[str, Responder] = {n: as_responder(r) for n, r in (adapters or {}).items()}
        self.fallback = fallback
        self.base_model: str | None = fallback if fallback is not None else next(iter(self.responders), None)
        self.template: Template = template
        self.max_model_len = max_model_len
        self.host = host
        self.port = port
        self.record = record
        self.latency_s = latency_s
        """Every model reply waits this long first (load tests: a model's time per call, no CPU spent)."""
        self.scale_out = scale_out
        self.dev_mode = dev_mode
        self.lora = lora
        self.engine = ScriptedEngine(
            weight_version=weight_version,
            token_latency_s=token_latency_s,
            token_gate=token_gate,
            kv_cache_tokens=kv_cache_tokens,
            max_num_seqs=max_num_seqs,
        )
        self.loaded_adapters: dict[str, str] = {}
        """LoRA adapters loaded now: name -> path."""
        self.adapter_log: list[tuple[str, str, str]] = []
        """Every successful ("load" | "unload", name, path), in order."""
        self.requests: list[dict[str, Any]] = []
        self._calls: dict[tuple[str, str | None], int] = {}
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The server root, e.g. `http://127.0.0.1:PORT` (for /health, /tokenize, /pause)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, `http://127.0.0.1:PORT/v1`."""
        return f"{self.url}/v1"

    def reset(self) -> None:
        """Forget recorded requests and every session's cursor."""
        self.requests.clear()
        self._calls.clear()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, re-checked whenever requests, pauses or tokens move (for tests
        that wait on events: `await server.wait_until(lambda: len(server.engine.queued) == 1)`)."""
        await self.engine.wait_until(predicate)

    def app(self) -> web.Application:
        """The aiohttp application (also usable with aiohttp's own test tools)."""
        app = web.Application(client_max_size=64 * 2**20, middlewares=[_fastapi_routing_errors])
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat_completions),
                web.post("/v1/completions", self._completions),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
                web.post("/tokenize", self._tokenize),
                web.post("/detokenize", self._detokenize),
                web.get("/metrics", self._metrics),
            ]
        )
        from sparring.testing.control import DevEndpoints, LoraEndpoints
        from sparring.testing.scale_out import ScaleOutEndpoints

        app.add_routes(ScaleOutEndpoints(self).routes())
        if self.dev_mode:
            app.add_routes(DevEndpoints(self).routes())
        if self.lora:
            app.add_routes(LoraEndpoints(self).routes())
        return app

    async def start(self) -> None:
        """Bind (port 0 picks a free port, then `port` holds it) and start serving."""
        self.engine.closing = False
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Stop serving; requests still sleeping, paused or gated are let go and finish first."""
        self.engine.close()
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

    # -- OpenAI endpoints -----------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            target, body = await self._accept(request)
            messages = body.get("messages") or []
            tools = body.get("tools") or []
            tool_choice = body.get("tool_choice") or ("auto" if tools else "none")
            prompt_ids = encode(render_messages(messages, tools, True, self.template))
            max_tokens = self._max_tokens(body.get("max_completion_tokens") or body.get("max_tokens"), prompt_ids)
            call = GenerationCall(
                target,
                messages,
                tools,
                tool_choice,
                prompt_ids,
                max_tokens,
                "chat",
                self._server_id("chatcmpl", request, body),
                choices=self._num_choices(body.get("n")),  # each choice is the responder's next step
                parse_tools=bool(tools) and tool_choice != "none",
            )
            completions = await self._run(request, call)
        except Refusal as refusal:
            return refusal.response()
        if body.get("stream"):
            chunks = wire.chat_chunks(
                self._next_id("chatcmpl"), int(time.time()), target.model, body, prompt_ids, completions
            )
            return await self._stream(request, chunks)
        response_id = self._next_id("chatcmpl")
        return json_response(wire.chat_body(response_id, int(time.time()), target.model, body, prompt_ids, completions))

    async def _completions(self, request: web.Request) -> web.Response:
        try:
            target, body = await self._accept(request)
            if body.get("stream"):
                raise bad_request("The scripted model server streams chat completions only; send stream=false.")
            prompt_ids = self._prompt_ids(body.get("prompt"))
            messages, tools = parse_prompt(decode(prompt_ids))
            max_tokens = self._max_tokens(body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS), prompt_ids)
            tool_choice = "auto" if tools else "none"
            request_id = self._server_id("cmpl", request, body)
            call = GenerationCall(
                target, messages, tools, tool_choice, prompt_ids, max_tokens, "completions", request_id
            )
            [completion] = await self._run(request, call)
        except Refusal as refusal:
            return refusal.response()
        response_id = self._next_id("cmpl")
        return json_response(
            wire.completion_body(response_id, int(time.time()), target.model, body, prompt_ids, completion)
        )

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        cards: list[tuple[str, str, str | None, int | None]]
        cards = [(name, name, None, self.max_model_len) for name in self.responders]
        cards += [(name, path, self.base_model, None) for name, path in self.loaded_adapters.items()]
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "sparring",
                "root": root,
                "parent": parent,
                "max_model_len": max_model_len,
            }
            for name, root, parent, max_model_len in cards
        ]
        return json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
        except Refusal as refusal:
            return refusal.response()
        if "messages" in body:
            text = render_messages(
                body["messages"], body.get("tools"), body.get("add_generation_prompt", True), self.template
            )
        else:
            text = body.get("prompt", "")
        tokens = encode(text)
        return json_response(
            {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens, "token_strs": None}
        )

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_json(request)
        except Refusal as refusal:
            return refusal.response()
        return json_response({"prompt": decode(body.get("tokens", []))})

    async def _metrics(self, request: web.Request) -> web.Response:
        engine = self.engine
        text = wire.metrics_text(self.base_model or "", len(engine.running), len(engine.queued), engine.kv_cache_usage)
        return web.Response(body=text.encode(), headers={"Content-Type": wire.METRICS_CONTENT_TYPE})

    # -- request handling -----------------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            raise bad_request(f"The request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        return body

    async def _accept(self, request: web.Request) -> tuple[Target, dict[str, Any]]:
        """Parse and record a generation request, and pick who answers it."""
        body = await self._read_json(request)
        return self._record(request, body, body.get("model") or ""), body

    def _record(self, request: web.Request, body: dict[str, Any], model: str, *, list_aliases: bool = False) -> Target:
        """Record the request (unless recording is off), then resolve its model or refuse with vLLM's 404
        (listing the served names with `list_aliases`, as vLLM 0.32 does)."""
        target = self._target(model)
        if self.record:
            adapter = target.adapter if target is not None else None
            entry = {
                "path": request.path,
                "model": model,
                "body": body,
                "headers": request.headers,
                "adapter": adapter,
                "weight_version": self.engine.weight_version,  # the server's, when the request arrived
            }
            self.requests.append(entry)
        if target is None:
            raise model_not_found(model, list(self.responders) if list_aliases else None)
        return target

    def _target(self, model: str) -> Target | None:
        """A base model by name, then a loaded adapter, then the fallback."""
        responder = self.responders.get(model)
        if responder is not None:
            return Target(model, model, responder)
        if model in self.loaded_adapters:
            own = self.adapter_responders.get(model)
            if own is not None:
                return Target(model, model, own, model)
            if self.base_model is not None:
                return Target(model, self.base_model, self.responders[self.base_model], model)
        if self.fallback is not None:
            return Target(model, model, self.responders[self.fallback])
        return None

    def _check_model(self, model: Any) -> None:
        """No model means the base model; any other name must be served (adapters included)."""
        if model and (not isinstance(model, str) or self._target(model) is None):
            raise model_not_found(str(model), list(self.responders))

    @staticmethod
    def _external_id(request: web.Request, body: Mapping[str, Any]) -> str | None:
        """The id a client gave the request (`X-Request-Id`, else the body's `request_id`), as vLLM takes it."""
        given = request.headers.get("X-Request-Id") or body.get("request_id")
        return given if isinstance(given, str) and given else None

    @classmethod
    def _server_id(cls, prefix: str, request: web.Request, body: Mapping[str, Any]) -> str | None:
        """vLLM's id for a request the client named: `<prefix>-<the client's id>` (None if unnamed)."""
        given = cls._external_id(request, body)
        return None if given is None else f"{prefix}-{given}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):08x}"

    def _prompt_ids(self, prompt: Any) -> list[int]:
        """Token-in prompts: a list of ids (or a string, encoded)."""
        if isinstance(prompt, str):
            return encode(prompt)
        if isinstance(prompt, list) and prompt and all(type(t) is int and 0 <= t < VOCAB_SIZE for t in prompt):
            return prompt
        raise bad_request(f"`prompt` must be a string or a non-empty list of token ids below {VOCAB_SIZE}.")

    def _max_tokens(self, requested: int | None, prompt_ids: list[int]) -> int:
        """The output budget, or vLLM's 400 when prompt + max_tokens exceeds `max_model_len`."""
        prompt_tokens = len(prompt_ids)
        if prompt_tokens >= self.max_model_len or prompt_tokens + (requested or 0) > self.max_model_len:
            raise Refusal(400, context_length_error(self.max_model_len, prompt_tokens, requested or 0))
        return requested if requested is not None else self.max_model_len - prompt_tokens

    @staticmethod
    def _num_choices(n: Any) -> int:
        if n is None:
            return 1
        if type(n) is not int or not 1 <= n <= MAX_CHOICES:
            raise bad_request(f"`n` must be an integer from 1 to {MAX_CHOICES}, got {n!r}.")
        return n

    async def _run(self, request: web.Request, call: GenerationCall) -> list[Completion]:
        """Admit the request to the engine, ask the responder for each choice, and let the engine
        generate each reply (paced, paused, aborted as it says)."""
        job = await self.engine.admit(len(call.prompt_ids), call.request_id)
        try:
            if job.aborted:  # aborted while queued: nothing was asked or generated
                return [self._complete(_NOTHING, Emitted([], [], True), False) for _ in range(call.choices)]
            steps = []
            for _ in range(call.choices):
                steps.append(await self._next_step(self._model_request(request, call), call, job))
            completions = []
            for step in steps:
                plan = self._plan(step, call.max_tokens, call.partial)
                completions.append(self._complete(plan, await self.engine.emit(job, plan.ids), call.parse_tools))
            return completions
        finally:
            self.engine.finish(job)

    def _model_request(self, request: web.Request, call: GenerationCall) -> ModelRequest:
        """The responder's view of a call; taking it advances the cursor of (model, session)."""
        session = request.headers.get("X-Session-ID")
        key = (call.target.cursor, session)
        call_index = self._calls.get(key, 0)
        self._calls[key] = call_index + 1
        return ModelRequest(
            model=call.target.model,
            messages=call.messages,
            tools=call.tools,
            tool_choice=call.tool_choice,
            session_id=session,
            call_index=call_index,
            max_tokens=call.max_tokens,
            endpoint=call.endpoint,
            adapter=call.target.adapter,
        )

    async def _next_step(self, model_request: ModelRequest, call: GenerationCall, job: Job) -> Step:
        """Ask the responder, then play out Hang, Fail and ContextFull; what is left is generated.

        The waits end early when the request is aborted (then it is reported aborted, whatever the step).
        """
        if self.latency_s:
            await self.engine.sleep(job, self.latency_s)
        reply = call.target.responder(model_request)
        if inspect.isawaitable(reply):
            reply = await reply
        step = as_step(reply)
        while isinstance(step, Hang):
            await self.engine.sleep(job, step.seconds)
            step = step.then
        if job.aborted:
            return step
        if isinstance(step, Fail):
            raise Refusal(step.status, failure_body(step.status) if step.body is None else step.body)
        if isinstance(step, ContextFull):
            prompt_tokens, max_tokens = len(call.prompt_ids), model_request.max_tokens or 0
            limit = max(1, min(self.max_model_len, prompt_tokens + max_tokens - 1))
            raise Refusal(400, context_length_error(limit, prompt_tokens, max_tokens))
        return step

    @staticmethod
    def _plan(step: Step, max_tokens: int, partial: list[int]) -> _Plan:
        """The ids of a reply, cut to `max_tokens` (a `Cut` also stops short of the end token). A prompt
        that ends with the start of this very reply gets only the rest of it."""
        text = step.text if isinstance(step, Say | Cut | Calls) else ""
        calls = (step,) if isinstance(step, Call) else step.calls if isinstance(step, Calls) else ()
        ids = encode(render_assistant_body(text, [(c.name, c.arguments) for c in calls]))
        if not isinstance(step, Cut):
            ids.append(IM_END_ID)
        if partial and ids[: len(partial)] == partial:
            ids = ids[len(partial) :]
        cut = len(ids) > max_tokens or isinstance(step, Cut)
        return _Plan(ids[:max_tokens] if cut else ids, cut, text, calls)

    def _complete(self, plan: _Plan, emitted: Emitted, parse_tools: bool) -> Completion:
        """What a choice ended as; tool calls are parsed only from a whole reply."""
        versions = emitted.weight_versions
        if emitted.aborted:
            return Completion(emitted.ids, "abort", None, [], versions)
        if plan.cut:
            return Completion(emitted.ids, "length", None, [], versions)
        if parse_tools and plan.calls:
            tool_calls = [self._tool_call(c) for c in plan.calls]
            return Completion(emitted.ids, "tool_calls", plan.text or None, tool_calls, versions)
        return Completion(emitted.ids, "stop", None, [], versions)

    def _tool_call(self, call: Call) -> dict[str, Any]:
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        return {
            "id": f"call_{next(self._ids):08x}",
            "type": "function",
            "function": {"name": call.name, "arguments": arguments},
        }

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        """Send chunks as server-sent events, then `data: [DONE]`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


_NOTHING = _Plan([], False, "", ())
