"""A lean OpenAI-compatible client over the one transport (pooled session, sticky replicas, retries).

The per-call path is hot (thousands of calls a second across episodes), so this module speaks the
wire format directly with orjson instead of going through an SDK, and captures vLLM's token-id
fields, which LangChain's ChatOpenAI drops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sparring.core.errors import ContextLengthExceeded, ModelRequestError
from sparring.core.messages import ToolCall
from sparring.models.generation import GenerationControl
from sparring.models.transport import Routing, Transport

# vLLM's wordings across versions for a prompt (plus max_tokens) that does not fit the model.
CONTEXT_LENGTH_MARKERS = ("context length", "maximum model length")


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
        """One chat completion; token ids and logprobs are captured when the endpoint asks for them."""
        if not self.control.is_open:
            await self.control.wait_open()
        model = self.control.adapter or self.config.model
        body: dict[str, Any] = {"model": model, "messages": messages, **sampling, **self._capture}
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        data, latency = await self._post("/chat/completions", body, episode_id)
        choice = data["choices"][0]
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
        )
        if self.config.capture_tokens:
            self._capture_ids(completion, data, choice)
        return completion

    async def complete_tokens(
        self,
        prompt_ids: list[int],
        *,
        episode_id: str,
        sampling: Mapping[str, Any],
        structured_outputs: dict[str, Any] | None = None,
    ) -> Completion:
        """Token in, token out: the prompt is exact ids (vLLM's /completions), the reply is raw text plus ids.

        Tool calls are not parsed here: in this mode sparring reads them from the text itself.
        `structured_outputs` is vLLM's constraint on the generated text (e.g. a tool call's arguments).
        """
        if not self.control.is_open:
            await self.control.wait_open()
        body: dict[str, Any] = {
            "model": self.control.adapter or self.config.model,
            "prompt": prompt_ids,
            **sampling,
            "return_token_ids": True,
            "logprobs": 0,
        }
        if structured_outputs is not None:
            body["structured_outputs"] = structured_outputs
        data, latency = await self._post("/completions", body, episode_id)
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
            latency_s=latency,
            max_tokens=sampling.get("max_tokens"),
        )

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
        reply = await self.transport.post(
            path, orjson.dumps(body), key=episode_id, headers={"X-Session-ID": episode_id}
        )
        if reply.status < 400:
            return orjson.loads(reply.body), reply.latency_s
        detail = _error_message(reply.body)
        if any(marker in detail.lower() for marker in CONTEXT_LENGTH_MARKERS):
            raise ContextLengthExceeded(f"{reply.url}: {detail}")
        raise ModelRequestError(f"{reply.url}: HTTP {reply.status}: {detail}")


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
