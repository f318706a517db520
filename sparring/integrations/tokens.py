"""A trainer's own generation engine as sparring's policy server: vLLM's token-in endpoint on loopback.

verl and slime sync the trained weights into *their* rollout engines (verl's `server_manager`, slime's
SGLang router), so in real training sparring's policy calls must be sampled there, or the trainer would
learn from another policy's tokens. sparring's tito mode already speaks token in, token out: the prompt
is the ledger's ids, the reply is ids plus logprobs. `TokenServer` serves that one endpoint
(`POST /inference/v1/generate`, vLLM's token endpoint, which sparring's client tries first and which carries
each call's weight version; and `POST /v1/completions` with a token-id prompt) on 127.0.0.1 and answers it with a
`generate(prompt_ids, sampling)` function the bridge gets from the trainer. It also renders prompts
(`POST /v1/chat/completions/render`) with the trainer's tokenizer and chat template, so the ids sparring
trains on are the trainer's own. Point the policy at its `base_url` and nothing else in sparring changes.

What is passed on: the token prompt, `max_tokens`, `temperature`, `top_p`, `top_k`, `stop`. What is not:
vLLM's `structured_outputs` (the tool-call constraint of a required tool choice): the trainer's engine
samples unconstrained, and a malformed call is an observation for the policy, as on any server without
constraints. A generation the engine aborted (a weight update) answers 503, which sparring's transport
retries as it retries any server error.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sparring.models.tito import ChatTokenizer


@dataclass(frozen=True, slots=True)
class Generated:
    """One generation by the trainer's engine."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """`stop` or `length`; `abort` when the engine dropped the request (it is answered 503 and retried)."""
    version: str | None = None
    """The weight version that sampled it, when the engine says (verl's global step, SGLang's weight_version)."""


GenerateFn = Callable[[list[int], Mapping[str, Any]], Awaitable[Generated]]
"""(prompt ids, sampling: max_tokens, temperature, top_p, top_k, stop, plus `session_id`, the episode's id from
sparring's `X-Session-ID` header, when the call carried one) -> the generation."""

SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "stop")


class TokenServer:
    """vLLM's `/v1/completions` (token-id prompts only) and `/v1/chat/completions/render` on 127.0.0.1,
    answered by `generate` and the trainer's tokenizer: sparring renders prompts here, with the trainer's
    own chat template, so the ids it trains on are the ones the trainer's tokenizer makes.

    `tokenizer` decodes the generated ids into the reply's text (sparring reads tool calls from it), with
    special tokens skipped as vLLM does. `versions` holds, per call, the version `generate` reported.
    """

    def __init__(self, generate: GenerateFn, tokenizer: ChatTokenizer, *, model: str = "policy") -> None:
        self._generate = generate
        self._tokenizer = tokenizer
        self.model = model
        self.port = 0
        self.calls = 0
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to give sparring as the policy's (`http://127.0.0.1:PORT/v1`)."""
        if self._runner is None:
            raise RuntimeError("the token server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes(
            [
                web.post("/inference/v1/generate", self._generate_tokens),
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions/render", self._render),
                web.get("/v1/models", self._models),
                web.get("/health", self._health),
            ]
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _generate_tokens(self, request: web.Request) -> web.Response:
        """vLLM's `/inference/v1/generate` (scale-out): ids and sampling in, ids, logprobs and versions out."""
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        params = body.get("sampling_params")
        if not isinstance(params, dict):
            return _error(400, "sampling_params must be an object")
        out = await self._run(request, body.get("token_ids"), params)
        if isinstance(out, web.Response):
            return out
        prompt, generated = out
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": generated.finish_reason,
            "token_ids": generated.token_ids,
            "text": self._tokenizer.decode(generated.token_ids, skip_special_tokens=True),
            "logprobs": {"content": [{"logprob": lp} for lp in generated.logprobs]},
            "weight_versions": _spans(generated),
        }
        return _reply(
            {"id": f"gen-{next(self._ids)}", "model": body.get("model") or self.model}, choice, prompt, generated
        )

    async def _completions(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if isinstance(body, web.Response):
            return body
        out = await self._run(request, body.get("prompt"), body)
        if isinstance(out, web.Response):
            return out
        prompt, generated = out
        choice: dict[str, Any] = {
            "index": 0,
            "text": self._tokenizer.decode(generated.token_ids, skip_special_tokens=True),
            "token_ids": generated.token_ids,
            "logprobs": {"token_logprobs": generated.logprobs},
            "finish_reason": generated.finish_reason,
        }
        if generated.version is not None:
            choice["weight_versions"] = _spans(generated)
        head = {"id": f"cmpl-{next(self._ids)}", "object": "text_completion", "model": body.get("model") or self.model}
        return _reply({**head, "prompt_token_ids": prompt}, choice, prompt, generated)

    async def _run(
        self, request: web.Request, prompt: Any, params: Mapping[str, Any]
    ) -> tuple[list[int], Generated] | web.Response:
        """Check the prompt, pass the sampling on (with the episode's id), and check what `generate` returned."""
        if not isinstance(prompt, list) or not prompt or not all(type(t) is int and t >= 0 for t in prompt):
            return _error(400, "the prompt must be a non-empty list of token ids (this server is token in, token out)")
        sampling = {key: params[key] for key in SAMPLING_KEYS if params.get(key) is not None}
        if isinstance(sampling.get("stop"), str):
            sampling["stop"] = [sampling["stop"]]
        if request.headers.get("X-Session-ID"):
            sampling["session_id"] = request.headers["X-Session-ID"]
        self.calls += 1
        out = await self._generate(prompt, sampling)
        if out.finish_reason == "abort":
            return _error(503, "the trainer's engine aborted the generation (a weight update); retry it")
        if len(out.logprobs) != len(out.token_ids):
            return _error(502, f"the engine returned {len(out.token_ids)} ids but {len(out.logprobs)} logprobs")
        return prompt, out

    async def _render(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(400, "messages must be a non-empty list of message objects")
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            return _error(400, "tools must be a list of tool objects")
        text = self._tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=bool(body.get("add_generation_prompt", True)), tokenize=False
        )
        ids = self._tokenizer.encode(str(text), add_special_tokens=False)  # the template wrote every special token
        return web.Response(body=orjson.dumps({"token_ids": ids}), content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "trainer"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()


async def _json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    return body if isinstance(body, dict) else _error(400, "the body must be a JSON object")


def _spans(out: Generated) -> list[dict[str, Any]] | None:
    """vLLM's version spans over the output: one span, the version that sampled every token."""
    return None if out.version is None else [{"version": out.version, "start": 0, "end": len(out.token_ids)}]


def _reply(head: dict[str, Any], choice: dict[str, Any], prompt: list[int], out: Generated) -> web.Response:
    usage = {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(out.token_ids),
        "total_tokens": len(prompt) + len(out.token_ids),
    }
    return web.Response(
        body=orjson.dumps({**head, "choices": [choice], "usage": usage}), content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    body = {
        "error": {"message": message, "type": "BadRequestError" if status == 400 else "ServerError", "code": status}
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
