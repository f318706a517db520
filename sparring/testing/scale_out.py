"""The scripted server's scale-out endpoints, as `vllm serve --enable-scale-out` serves them.

- `POST /inference/v1/generate`: token ids in; per choice the generated `token_ids`, logprobs by token
  id, and `weight_versions` spans over the output tokens. A prompt that ends inside an assistant turn
  (e.g. the tokens of an aborted call) gets the rest of that reply.
- `POST /v1/chat/completions/render`, `POST /v1/completions/render`: the prompt ids the server itself
  would generate from, so a client needs no tokenizer of its own.
- `POST /inference/v1/abort_requests`: end requests by the ids their clients gave them.

Without scale-out each of them answers vLLM's 403. The handlers use the server's request plumbing
(its underscored methods are shared within this package).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sparring.testing import wire
from sparring.testing.errors import (
    SCALE_OUT_DISABLED,
    Refusal,
    bad_request,
    error_body,
    invalid,
    json_response,
    missing,
)
from sparring.testing.server import COMPLETIONS_DEFAULT_MAX_TOKENS, MAX_CHOICES, FakeModelServer, GenerationCall
from sparring.testing.tokenizer import VOCAB_SIZE, decode, encode, parse_prompt, render_messages, split_open_reply


class ScaleOutEndpoints:
    """The token-in/token-out and render endpoints of one `FakeModelServer`."""

    def __init__(self, server: FakeModelServer) -> None:
        self.server = server

    def routes(self) -> list[web.RouteDef]:
        """The routes; each answers vLLM's 403 when the server has scale-out off."""
        handlers = {
            "/inference/v1/generate": self.generate,
            "/v1/chat/completions/render": self.render_chat,
            "/v1/completions/render": self.render_completions,
            "/inference/v1/abort_requests": self.abort_requests,
        }
        if not self.server.scale_out:
            return [web.post(path, self.disabled) for path in handlers]
        return [web.post(path, handler) for path, handler in handlers.items()]

    async def disabled(self, request: web.Request) -> web.Response:
        """What vLLM answers on these paths without --enable-scale-out."""
        return json_response(SCALE_OUT_DISABLED, 403)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """`POST /inference/v1/generate`: generate from token ids, answer with token ids and version spans."""
        server = self.server
        try:
            body = await server._read_json(request)
            token_ids = self._token_ids(body)
            if "sampling_params" not in body:
                raise missing(("body", "sampling_params"), body)
            params = body["sampling_params"]
            if not isinstance(params, dict):
                raise invalid(("body", "sampling_params"), "dict_type", "Input should be a valid dictionary", params)
            output_mode = body.get("output_mode", "tokens")
            if output_mode not in ("tokens", "text"):
                message = "Input should be 'tokens' or 'text'"
                raise invalid(("body", "output_mode"), "literal_error", message, output_mode)
            _check_logprobs(params.get("logprobs"))
            if not isinstance(body.get("stream_options") or {}, dict):
                message = "Input should be a valid dictionary or object to extract fields from"
                raise invalid(("body", "stream_options"), "model_attributes_type", message, body["stream_options"])
            target = server._record(request, body, body.get("model") or server.base_model or "", list_aliases=True)
            _check_vocabulary(token_ids)
            self._check_prompt_length(len(token_ids))
            # unnamed: a number from the counter chat and completions take theirs from, so runs repeat exactly
            request_id = server._server_id("generate-tokens", request, body) or server._next_id("generate-tokens")
            head, partial = split_open_reply(token_ids)
            messages, tools = parse_prompt(decode(head))
            call = GenerationCall(
                target,
                messages,
                tools,
                "auto" if tools else "none",
                token_ids,
                self._max_tokens(params, len(token_ids)),
                "generate",
                request_id,
                choices=_choices(params.get("n", 1)),
                partial=partial,
            )
            completions = await server._run(request, call)
        except Refusal as refusal:
            return refusal.response()
        prompt_ids = token_ids if body.get("return_token_ids") else None
        if body.get("stream"):
            options = body.get("stream_options")
            chunks = wire.generate_chunks(
                request_id, params, output_mode, options, prompt_ids, len(token_ids), completions
            )
            return await server._stream(request, chunks)
        created = int(time.time())
        return json_response(
            wire.generate_body(
                request_id, created, target.model, params, output_mode, prompt_ids, len(token_ids), completions
            )
        )

    @staticmethod
    def _token_ids(body: dict[str, Any]) -> list[int]:
        """`token_ids` as vLLM's `GenerateRequest` validates it: a non-empty list of non-negative ints."""
        if "token_ids" not in body:
            raise missing(("body", "token_ids"), body)
        token_ids = body["token_ids"]
        if not isinstance(token_ids, list):
            raise invalid(("body", "token_ids"), "list_type", "Input should be a valid list", token_ids)
        for index, token_id in enumerate(token_ids):
            if type(token_id) is not int:
                message = "Input should be a valid integer"
                raise invalid(("body", "token_ids", str(index)), "int_type", message, token_id)
        if not token_ids:
            message = "List should have at least 1 item after validation, not 0"
            raise invalid(("body", "token_ids"), "too_short", message, token_ids)
        if min(token_ids) < 0:
            message = "Value error, token_ids must not contain negative values"
            raise invalid(("body", "token_ids"), "value_error", message, token_ids)
        return token_ids

    def _check_prompt_length(self, prompt_tokens: int) -> None:
        """vLLM's engine refuses a prompt that leaves no room for one output token."""
        limit = self.server.max_model_len
        if prompt_tokens > limit:
            raise bad_request(
                f"The decoder prompt (length {prompt_tokens}) is longer than the maximum model length of {limit}. "
                "Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        if prompt_tokens == limit:
            raise bad_request(
                f"The decoder prompt (length {prompt_tokens}) plus the number of requested output tokens "
                f"(at least 1) is longer than the maximum model length of {limit}. Make sure that "
                "`max_model_len` is no smaller than the number of text tokens (prompt + requested output tokens)."
            )

    def _max_tokens(self, params: Mapping[str, Any], prompt_tokens: int) -> int:
        """The server fills in what fits when `max_tokens` is absent; generation never runs past the context."""
        room = self.server.max_model_len - prompt_tokens
        requested = params.get("max_tokens", room)
        return room if requested is None else min(_positive_max_tokens(requested), room)

    async def render_chat(self, request: web.Request) -> web.Response:
        """`POST /v1/chat/completions/render`: the prompt ids /v1/chat/completions would generate from."""
        server = self.server
        try:
            body = await server._read_json(request)
            if "messages" not in body:
                raise missing(("body", "messages"), body)
            server._check_model(body.get("model"))
            messages, tools = _objects(body, "messages"), _objects(body, "tools")
            add_generation_prompt = body.get("add_generation_prompt", True)
            ids = encode(render_messages(messages, tools, add_generation_prompt, server.template))
            requested = body.get("max_completion_tokens")
            max_tokens = self._render_max_tokens(body.get("max_tokens") if requested is None else requested, ids)
            logprobs = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
        except Refusal as refusal:
            return refusal.response()
        request_id = f"chatcmpl-{server._external_id(request, body) or uuid.uuid4().hex}"
        params = wire.rendered_sampling_params(body, max_tokens, logprobs)
        return json_response(wire.render_body(request_id, ids, params, body))

    async def render_completions(self, request: web.Request) -> web.Response:
        """`POST /v1/completions/render`: prompts (text or ids, one or a list) to one ready request each."""
        server = self.server
        try:
            body = await server._read_json(request)
            if "prompt" not in body:
                raise missing(("body", "prompt"), body)
            server._check_model(body.get("model"))
            prompts = _prompts(body["prompt"])
            for ids in prompts:
                _check_vocabulary(ids)
            requested = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
            limits = [self._render_max_tokens(requested, ids) for ids in prompts]
        except Refusal as refusal:
            return refusal.response()
        base = f"cmpl-{server._external_id(request, body) or uuid.uuid4().hex}"
        rendered = [
            wire.render_body(
                base if len(prompts) == 1 else f"{base}-{index}",
                ids,
                wire.rendered_sampling_params(body, max_tokens, body.get("logprobs")),
                body,
            )
            for index, (ids, max_tokens) in enumerate(zip(prompts, limits, strict=True))
        ]
        return json_response(rendered)

    def _render_max_tokens(self, requested: Any, ids: list[int]) -> int:
        """vLLM's `get_max_tokens`: what was asked, but no more than the context leaves."""
        limit = self.server.max_model_len
        if len(ids) > limit:
            raise bad_request(f"Input length ({len(ids)}) exceeds model's maximum context length ({limit}).")
        room = limit - len(ids)
        return room if requested is None else min(_positive_max_tokens(requested), room)

    async def abort_requests(self, request: web.Request) -> web.Response:
        """`POST /inference/v1/abort_requests`: end the requests named by `request_ids`; an empty 200."""
        try:
            body = await self.server._read_json(request)
        except Refusal as refusal:
            return refusal.response()
        ids = body.get("request_ids")
        if not isinstance(ids, list):
            return json_response(error_body("Missing 'request_ids' in request body", "Bad Request", 400), 400)
        self.server.engine.abort(str(i) for i in ids)
        return web.Response()


def _check_vocabulary(token_ids: list[int]) -> None:
    if token_ids and max(token_ids) >= VOCAB_SIZE:
        raise bad_request(f"Token id {max(token_ids)} is out of vocabulary")


def _check_logprobs(logprobs: Any) -> None:
    """`sampling_params.logprobs`: None, -1 (every candidate) or a count."""
    if logprobs is not None and (type(logprobs) is not int or logprobs < -1):
        raise bad_request(f"logprobs must be non-negative or -1, got {logprobs}.", "logprobs")


def _objects(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A list of JSON objects (chat `messages`, `tools`); absent or null is empty."""
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise invalid(("body", key), "list_type", "Input should be a valid list of objects", value)
    return value


def _positive_max_tokens(requested: Any) -> int:
    if type(requested) is not int or requested < 1:
        raise bad_request(f"max_tokens must be at least 1, got {requested}.", "max_tokens")
    return requested


def _choices(n: Any) -> int:
    """`sampling_params.n`, within what the server batches."""
    if type(n) is not int or n < 1:
        raise bad_request(f"n must be at least 1, got {n}.", "n")
    if n > MAX_CHOICES:
        raise bad_request(f"sampling_params.n must be at most the server's max_num_seqs ({MAX_CHOICES}), got {n}.")
    return n


def _prompts(prompt: Any) -> list[list[int]]:
    """A completions `prompt`: text, ids, or a non-empty list of either."""
    if isinstance(prompt, str):
        return [encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(type(t) is int for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt):
            return [encode(p) for p in prompt]
        if all(isinstance(p, list) and p and all(type(t) is int for t in p) for p in prompt):
            return prompt
    message = "Input should be a string, a list of token ids, or a non-empty list of either"
    raise invalid(("body", "prompt"), "union_type", message, prompt)
