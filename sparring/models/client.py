"""A lean OpenAI-compatible client over the one transport (pooled session, sticky replicas, retries).

The per-call path is hot (thousands of calls a second across episodes), so this module speaks the
wire format directly with orjson instead of going through an SDK, and captures vLLM's token-id
fields, which LangChain's ChatOpenAI drops.

Token in, token out (`complete_tokens`) goes to vLLM's token endpoint, `/inference/v1/generate`,
where the replica serves it (vLLM 0.32 and later with `--enable-scale-out`): its replies carry the
weight version of every sampled token. A replica without it (vLLM's 403, or no such route) is
remembered and gets `/v1/completions` instead, which has no versions. `render` asks the server for
a conversation's prompt ids (`/v1/chat/completions/render`, same condition), so exact ids need no
local tokenizer. What each replica offers is learnt from its first answer and kept per replica URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sparring.core.errors import ContextLengthExceeded, ModelRequestError
from sparring.core.messages import ToolCall
from sparring.core.versions import VersionSpan, append_spans, one_version, spans_from_server
from sparring.models.generation import GenerationControl
from sparring.models.transport import Reply, Routing, Transport
from sparring.tools.constraints import may_continue

# vLLM's wordings across versions for a prompt (plus max_tokens) that does not fit the model.
CONTEXT_LENGTH_MARKERS = ("context length", "maximum model length")
MAX_RESUMES = 32
"""Aborted answers one call takes before it gives up: a pause aborts a call once, a server that aborts
every request (an operator's loop of `/abort_requests`) must not hold an episode forever."""
GENERATE_PATH = "/../inference/v1/generate"
"""vLLM serves the token endpoint at the server's root, beside `/v1` (base URLs end in `/v1`; the URL is normalised)."""
RENDER_PATH = "/chat/completions/render"
COMPLETIONS_PATH = "/completions"


class ScaleOutUnavailable(ModelRequestError):
    """The server cannot render prompts: it is not vLLM 0.32 or later started with `--enable-scale-out`."""


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One OpenAI-compatible model endpoint, possibly served by several replicas.

    Sampling (temperature, max_tokens, stop, ...) is not part of it: it comes with each call (per
    episode, from its settings and its task), so episodes with different sampling share one client.
    """

    base_urls: tuple[str, ...]
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 3
    retry_backoff_s: float = 0.25
    capture_tokens: bool = False
    max_connections: int = 512
    routing: Routing = "least_loaded"


@dataclass(slots=True)
class Completion:
    """One reply, with the exact ids the server sampled when token capture is on."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    completion_logprobs: list[float] | None = None
    latency_s: float = 0.0
    max_tokens: int | None = None
    weight_versions: list[VersionSpan] | None = None
    """The completion's tokens by the weights that sampled them, as the server reported them (None: no versions)."""
    resumed: int = 0
    """Times the call was aborted by the server (a pause in abort mode) and went on after the resume."""


def parse_tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    """The server-parsed tool calls of a chat message, arguments kept as the raw text the model wrote."""
    calls = message.get("tool_calls") or ()
    return [
        ToolCall(
            id=call.get("id") or f"call_{i}",
            name=call["function"]["name"],
            arguments=call["function"].get("arguments") or "",
        )
        for i, call in enumerate(calls)
    ]


class ModelClient:
    """Calls one endpoint. Safe to share across thousands of concurrent episodes in one event loop."""

    def __init__(self, config: EndpointConfig, control: GenerationControl | None = None) -> None:
        """`control`: shared with the other clients of the same servers (the pool's, which the weight sync
        drives); default: this client's own."""
        self.config = config
        self.transport = Transport.for_endpoint(config)
        self.control = control or GenerationControl()  # the weight sync closes it, and names the adapter to use
        self.scale_out: dict[str, bool] = {}
        """Per replica base URL: whether it serves vLLM's token and render endpoints (learnt on first use)."""
        self.replicas = self.transport.replicas
        self.latency = self.transport.latency
        self._capture = {"return_token_ids": True, "logprobs": True, "top_logprobs": 0} if config.capture_tokens else {}

    async def aclose(self) -> None:
        """Close the pooled session (idempotent)."""
        await self.transport.aclose()

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str,
        sampling: Mapping[str, Any],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; token ids and logprobs are captured when the endpoint asks for them.

        The chat endpoint reports no weight versions: only a call sent to a LoRA adapter has one, the
        version the adapter was loaded as.
        """
        resumed = 0
        while True:
            if not self.control.is_open:
                await self.control.wait_open()
            adapter, version = self.control.adapter, self.control.version
            model = adapter or self.config.model
            body: dict[str, Any] = {"model": model, "messages": messages, **sampling, **self._capture}
            if tools:
                body["tools"] = tools
                if tool_choice is not None:
                    body["tool_choice"] = tool_choice
            data, latency = await self._post("/chat/completions", body, episode_id)
            choice = data["choices"][0]
            if choice.get("finish_reason") != "abort":
                break
            # a chat reply cannot go on from its partial text (no ids to extend): made again, whole
            resumed = self._count_resume(resumed, episode_id)
        message = choice["message"]
        usage = data.get("usage") or {}
        completion = Completion(
            text=message.get("content") or "",
            tool_calls=parse_tool_calls(message),
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_s=latency,
            max_tokens=sampling.get("max_tokens"),
            resumed=resumed,
        )
        if self.config.capture_tokens:
            self._capture_ids(completion, data, choice)
            if adapter is not None and version is not None:  # the chat endpoint reports no versions itself
                completion.weight_versions = one_version(version, len(completion.completion_token_ids or ()))
        return completion

    async def complete_tokens(
        self,
        prompt_ids: list[int],
        *,
        episode_id: str,
        sampling: Mapping[str, Any],
        structured_outputs: dict[str, Any] | None = None,
    ) -> Completion:
        """Token in, token out: the prompt is exact ids, the reply is raw text plus ids, logprobs and versions.

        Goes to `/inference/v1/generate` where the episode's replica serves it, else to `/v1/completions`.
        The versions are the server's spans; a call sent to a LoRA adapter has the version the adapter
        was loaded as (`control.version`) on every token, whatever the server's labels say.
        Tool calls are not parsed here: in this mode sparring reads them from the text itself.
        `structured_outputs` is vLLM's constraint on the generated text (e.g. a tool call's arguments).
        """
        done: Completion | None = None  # what aborted attempts generated so far (unconstrained calls)
        resumed = 0
        max_tokens = sampling.get("max_tokens")
        while True:
            if not self.control.is_open:
                await self.control.wait_open()
            ask, prompt = sampling, prompt_ids
            if done is not None:
                prompt = prompt_ids + (done.completion_token_ids or [])
                if max_tokens is not None:
                    ask = {**sampling, "max_tokens": max_tokens - len(done.completion_token_ids or ())}
            part = await self._one_tokens_call(prompt, episode_id, ask, structured_outputs)
            completion = part if done is None else _joined(done, part)
            left = None if max_tokens is None else max_tokens - len(completion.completion_token_ids or ())
            if part.finish_reason != "abort":
                break
            resumed = self._count_resume(resumed, episode_id)
            if left is not None and left <= 0:  # aborted on its last token: nothing is left to generate
                completion.finish_reason = "length"
                break
            # vLLM's grammar starts again with a new request: a reply that went into a tool call cannot go
            # on from its partial (it would open a second one), so it is made again from its prompt
            done = completion if may_continue(structured_outputs, completion.text) else None
        completion.prompt_token_ids = prompt_ids
        completion.max_tokens = max_tokens
        completion.resumed = resumed
        return completion

    async def _one_tokens_call(
        self,
        prompt_ids: list[int],
        episode_id: str,
        sampling: Mapping[str, Any],
        structured_outputs: dict[str, Any] | None,
    ) -> Completion:
        """One token-in, token-out request to the current adapter, its spans by the adapter's version."""
        adapter, version = self.control.adapter, self.control.version
        model = adapter or self.config.model
        completion = None
        if self.scale_out.get(self._replica(episode_id)) is not False:
            completion = await self._generate(prompt_ids, model, episode_id, sampling, structured_outputs)
        if completion is None:
            completion = await self._complete(prompt_ids, model, episode_id, sampling, structured_outputs)
        tokens = len(completion.completion_token_ids or ())
        # vLLM labels tokens with the engine's version, not the adapter's: a request keeps the adapter it
        # started on across a swap, so the adapter sparring sent it to says which weights sampled it
        if adapter is not None and version is not None:
            completion.weight_versions = one_version(version, tokens)
        elif self.control.adapter != adapter and completion.weight_versions:
            # an adapter was loaded while this base-model call ran (a keep pause): the base weights
            # sampled every token, under the label the server had when the call started
            completion.weight_versions = one_version(completion.weight_versions[0]["version"], tokens)
        return completion

    def _count_resume(self, resumed: int, episode_id: str) -> int:
        """One more aborted answer for a call; past `MAX_RESUMES` the call fails."""
        if resumed >= MAX_RESUMES:
            raise ModelRequestError(
                f"{self.config.model}: the server aborted episode {episode_id}'s call {resumed + 1} times in a row"
            )
        return resumed + 1

    async def render(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """The prompt ids the server makes of `messages` (its chat template and tokenizer), for token in, token out.

        Raises `ScaleOutUnavailable` when the episode's replica cannot render.
        """
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
        }
        if tools:
            body["tools"] = tools
        reply = await self._send(RENDER_PATH, body, episode_id)
        if self._learn(reply, RENDER_PATH):
            raise ScaleOutUnavailable(
                f"{reply.url}: HTTP {reply.status}: {self.config.model}'s server cannot render prompts; token "
                "mode tito without policy_tokenizer needs vLLM 0.32 or later started with --enable-scale-out (as "
                "`sparring models up` starts it): give policy_tokenizer (the model's local folder), or use token "
                "mode chat"
            )
        ids = self._answer(reply).get("token_ids")
        if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
            raise ModelRequestError(f"{reply.url}: the render answer has no token_ids list")
        return ids

    async def _generate(
        self,
        prompt_ids: list[int],
        model: str,
        episode_id: str,
        sampling: Mapping[str, Any],
        structured_outputs: dict[str, Any] | None,
    ) -> Completion | None:
        """One call of vLLM's token endpoint; None when the replica turns out not to serve it."""
        params: dict[str, Any] = {**sampling, "logprobs": 0}
        if structured_outputs is not None:
            params["structured_outputs"] = structured_outputs
        body = {"model": model, "token_ids": prompt_ids, "sampling_params": params, "output_mode": "text"}
        reply = await self._send(GENERATE_PATH, body, episode_id)
        if self._learn(reply, GENERATE_PATH):
            return None
        data = self._answer(reply)
        try:
            choice = data["choices"][0]
            ids = choice["token_ids"]
            logprobs = [entry["logprob"] for entry in (choice.get("logprobs") or {}).get("content") or ()]
            spans = spans_from_server(choice.get("weight_versions"), len(ids))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelRequestError(f"{reply.url}: not a generate answer sparring can use: {exc}") from None
        if len(logprobs) != len(ids):
            raise ModelRequestError(f"{reply.url}: {len(ids)} completion ids but {len(logprobs)} logprobs")
        usage = data.get("usage") or {}
        return Completion(
            text=choice.get("text") or "",
            tool_calls=[],
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", len(prompt_ids)),
            completion_tokens=usage.get("completion_tokens", len(ids)),
            prompt_token_ids=prompt_ids,
            completion_token_ids=ids,
            completion_logprobs=logprobs,
            latency_s=reply.latency_s,
            max_tokens=sampling.get("max_tokens"),
            weight_versions=spans,
        )

    async def _complete(
        self,
        prompt_ids: list[int],
        model: str,
        episode_id: str,
        sampling: Mapping[str, Any],
        structured_outputs: dict[str, Any] | None,
    ) -> Completion:
        """One call of `/v1/completions` with prompt ids (vLLM returns the ids it sampled; no versions)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt_ids, **sampling}
        body |= {"return_token_ids": True, "logprobs": 0}
        if structured_outputs is not None:
            body["structured_outputs"] = structured_outputs
        reply = await self._send(COMPLETIONS_PATH, body, episode_id)
        data = self._answer(reply)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        completion_ids = choice.get("token_ids")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if completion_ids is None or logprobs is None or len(logprobs) != len(completion_ids):
            raise ModelRequestError(
                f"{self.config.model}: /completions returned no token ids or logprobs; token mode tito needs vLLM"
            )
        return Completion(
            text=choice.get("text") or "",
            tool_calls=[],
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", len(prompt_ids)),
            completion_tokens=usage.get("completion_tokens", len(completion_ids)),
            prompt_token_ids=data.get("prompt_token_ids") or choice.get("prompt_token_ids") or prompt_ids,
            completion_token_ids=completion_ids,
            completion_logprobs=[0.0 if lp is None else lp for lp in logprobs],
            latency_s=reply.latency_s,
            max_tokens=sampling.get("max_tokens"),
        )

    def _replica(self, episode_id: str) -> str:
        """The replica (base URL) the episode's calls go to."""
        return self.transport.replica(episode_id).rstrip("/") if self.transport.replicas is not None else ""

    def _learn(self, reply: Reply, path: str) -> bool:
        """Remember whether the replica that answered serves vLLM's scale-out endpoints; True if it does not."""
        disabled = reply.status == 403 or (reply.status == 404 and not _is_error_object(reply.body))
        self.scale_out[reply.url.removesuffix(path)] = not disabled
        return disabled

    def _capture_ids(self, completion: Completion, data: dict[str, Any], choice: dict[str, Any]) -> None:
        """Take the exact ids and logprobs the server sampled; refuse replies that lack them."""
        prompt_ids = data.get("prompt_token_ids") or choice.get("prompt_token_ids")
        completion_ids = choice.get("token_ids")
        if prompt_ids is None or completion_ids is None:
            raise ModelRequestError(
                f"{self.config.model}: the server returned no token ids; sparring needs a vLLM server "
                "(return_token_ids) for the policy, or turn token capture off"
            )
        content = (choice.get("logprobs") or {}).get("content") or ()
        logprobs = [entry["logprob"] for entry in content]
        if len(logprobs) != len(completion_ids):
            raise ModelRequestError(
                f"{self.config.model}: {len(completion_ids)} completion ids but {len(logprobs)} logprobs"
            )
        completion.prompt_token_ids = prompt_ids
        completion.completion_token_ids = completion_ids
        completion.completion_logprobs = logprobs

    async def _post(self, path: str, body: dict[str, Any], episode_id: str) -> tuple[dict[str, Any], float]:
        """POST through the transport; a 4xx becomes `ContextLengthExceeded` or `ModelRequestError`."""
        reply = await self._send(path, body, episode_id)
        return self._answer(reply), reply.latency_s

    async def _send(self, path: str, body: dict[str, Any], episode_id: str) -> Reply:
        """POST through the transport (retries, the episode's replica); any answer below 500 comes back."""
        return await self.transport.post(path, orjson.dumps(body), key=episode_id, headers={"X-Session-ID": episode_id})

    def _answer(self, reply: Reply) -> dict[str, Any]:
        """The JSON body of a 2xx/3xx answer; a 4xx becomes `ContextLengthExceeded` or `ModelRequestError`."""
        if reply.status < 400:
            return orjson.loads(reply.body)
        detail = _error_message(reply.body)
        if any(marker in detail.lower() for marker in CONTEXT_LENGTH_MARKERS):
            raise ContextLengthExceeded(f"{reply.url}: {detail}")
        raise ModelRequestError(f"{reply.url}: HTTP {reply.status}: {detail}")


def _joined(done: Completion, part: Completion) -> Completion:
    """An aborted reply's tokens followed by its continuation's: one reply, as if never interrupted."""
    ids = (done.completion_token_ids or []) + (part.completion_token_ids or [])
    spans = None
    if done.weight_versions is not None and part.weight_versions is not None:
        spans = append_spans(done.weight_versions, part.weight_versions, len(done.completion_token_ids or ()))
    return Completion(
        text=done.text + part.text,
        tool_calls=[],
        finish_reason=part.finish_reason,
        prompt_tokens=done.prompt_tokens,
        completion_tokens=len(ids),
        prompt_token_ids=done.prompt_token_ids,
        completion_token_ids=ids,
        completion_logprobs=(done.completion_logprobs or []) + (part.completion_logprobs or []),
        latency_s=done.latency_s + part.latency_s,
        weight_versions=spans,
    )


def _is_error_object(raw: bytes) -> bool:
    """Whether a body is an OpenAI/vLLM error object (`{"error": ...}`): a 404 that is not one means no such route."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "error" in data


def _error_message(raw: bytes) -> str:
    """The human part of an OpenAI/vLLM error body, whichever shape it has."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
    return raw[:500].decode("utf-8", "replace")
