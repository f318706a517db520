"""A lean OpenAI-compatible client: one pooled aiohttp session per endpoint, sticky replicas, retries.

The per-call path is hot (thousands of calls a second across episodes), so this module speaks the
wire format directly with orjson instead of going through an SDK, and captures vLLM's token-id
fields, which LangChain's ChatOpenAI drops.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from sparring.models.latency import LatencyHistogram
from sparring.models.replicas import ReplicaSet
from sparring.tools.specs import ToolCall

# vLLM's wordings across versions for a prompt (plus max_tokens) that does not fit the model.
CONTEXT_LENGTH_MARKERS = ("context length", "maximum model length")


class ModelCallError(Exception):
    """A model call that could not produce a reply."""


class ContextLengthExceeded(ModelCallError):
    """The prompt no longer fits the model's context window (vLLM's 400)."""


class ModelRequestError(ModelCallError):
    """The server rejected the request (4xx): retrying would not help; fix the request or the config."""


class ModelUnavailable(ModelCallError):
    """The server kept failing (5xx, connection errors, time-outs) after every retry."""


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One OpenAI-compatible model endpoint, possibly served by several replicas."""

    base_urls: tuple[str, ...]
    model: str
    api_key: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    timeout_s: float = 120.0
    max_retries: int = 3
    retry_backoff_s: float = 0.25
    capture_tokens: bool = False
    max_connections: int = 512


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

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.replicas = ReplicaSet(config.base_urls)
        self.latency = LatencyHistogram()  # successful calls only, retries and backoff included
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._sampling = {
            key: value
            for key, value in (
                ("temperature", config.temperature),
                ("top_p", config.top_p),
                ("max_tokens", config.max_tokens),
            )
            if value is not None
        }
        if config.stop:
            self._sampling["stop"] = list(config.stop)
        if config.capture_tokens:
            self._sampling.update(return_token_ids=True, logprobs=True, top_logprobs=0)

    def _ensure_session(self) -> aiohttp.ClientSession:
        """One pooled session per event loop (a CLI run, a test session and a server each have their own)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
            self._slots = asyncio.Semaphore(self.config.max_connections)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the pooled session (idempotent)."""
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; token ids and logprobs are captured when the endpoint asks for them."""
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, **self._sampling}
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
            max_tokens=self.config.max_tokens,
        )
        if self.config.capture_tokens:
            self._capture(completion, data, choice)
        return completion

    async def complete_tokens(
        self, prompt_ids: list[int], *, episode_id: str, structured_outputs: dict[str, Any] | None = None
    ) -> Completion:
        """Token in, token out: the prompt is exact ids (vLLM's /completions), the reply is raw text plus ids.

        Tool calls are not parsed here: in this mode sparring reads them from the text itself.
        `structured_outputs` is vLLM's constraint on the generated text (e.g. a tool call's arguments).
        """
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": prompt_ids,
            **self._sampling,
            "return_token_ids": True,
            "logprobs": 0,
        }
        body.pop("top_logprobs", None)
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
            max_tokens=self.config.max_tokens,
        )

    def _capture(self, completion: Completion, data: dict[str, Any], choice: dict[str, Any]) -> None:
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
        """POST with bounded retries on 5xx, connection errors and time-outs; never on 4xx."""
        session = self._ensure_session()
        payload = orjson.dumps(body)
        headers = {**self._headers, "X-Session-ID": episode_id}
        last_error = ""
        started: float | None = None  # model time includes failed attempts and backoff, not waiting for a slot
        assert self._slots is not None
        replicas = self.replicas
        url = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            replica = replicas.pick(episode_id)  # re-picked per attempt: a replica taken out meanwhile hands over
            url = replica.rstrip("/") + path
            try:
                async with self._slots:
                    started = started or time.perf_counter()
                    replicas.started(replica)
                    healthy: bool | None = None  # None: cancelled, which says nothing about the replica
                    try:
                        async with session.post(url, data=payload, headers=headers, timeout=self._timeout) as resp:
                            raw = await resp.read()
                            latency = time.perf_counter() - started
                            status = resp.status
                        healthy = status < 500
                    except (TimeoutError, aiohttp.ClientError):
                        healthy = False
                        raise
                    finally:
                        replicas.finished(replica, ok=healthy)
            except TimeoutError:
                last_error = f"no reply within {self.config.timeout_s:g} s"
                continue
            except aiohttp.ClientError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if status < 400:
                self.latency.add(latency)
                return orjson.loads(raw), latency
            detail = _error_message(raw)
            if status >= 500:
                last_error = f"HTTP {status}: {detail}"
                continue
            if any(marker in detail.lower() for marker in CONTEXT_LENGTH_MARKERS):
                raise ContextLengthExceeded(f"{url}: {detail}")
            raise ModelRequestError(f"{url}: HTTP {status}: {detail}")
        raise ModelUnavailable(f"{url}: failed after {self.config.max_retries + 1} attempts; last: {last_error}")


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
