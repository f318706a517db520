"""A typed Python client for `sparring serve`: rollouts, streaming batches, weight sync and metrics, over HTTP.

    from sparring.client import SparringClient, AsyncSparringClient

    with SparringClient("http://127.0.0.1:8080", api_key=...) as client:      # sync (any thread, notebooks too)
        records = client.rollouts({"env_seed": {}}, repeats=4)
        for record in client.batch(tasks, repeats=8):                         # records as episodes end
            ...
        client.pause("keep"); client.update_weights("8", adapter="/ckpt/8"); client.resume()

    async with AsyncSparringClient("http://127.0.0.1:8080") as client:       # async, same methods
        stream = client.batch(tasks)
        async for record in stream:
            ...
        stream.summary                                                       # the batch's last line

Errors are sparring's (core/errors.py): a refused weight step is `WeightUpdateRefused` (403/409/422,
with `.status`) and one every policy server failed `WeightSyncFailed` (502), as `engine.weights` raises
them in-process; otherwise 401 `ServiceAuthError`, other 4xx `ServiceRequestError` (both `UsageError`s),
429 `ServiceOverloaded` (`.retry_after_s`), 5xx and connection failures `ServiceUnavailable`. Every one
carries `.status` and the service's `.detail`.

Records are plain dicts, exactly what `sparring run --json` prints. The sync client runs the async one on
an event loop of its own, in a thread of its own, so it works where a loop is already running.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from sparring.core.errors import (
    ServiceAuthError,
    ServiceError,
    ServiceOverloaded,
    ServiceRequestError,
    ServiceUnavailable,
    WeightSyncFailed,
    WeightUpdateRefused,
)
from sparring.core.weights import PauseMode, ReplicaWeights
from sparring.core.weights import StepReport as WeightStep
from sparring.core.weights import WeightsInfo as WeightsState

Record = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """A batch's last line: episodes by status and stop reason, mean reward, wall time."""

    episodes: int
    counts: dict[str, int]
    stop_reasons: dict[str, int]
    mean_reward: float | None
    wall_s: float


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One Prometheus sample."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Metrics:
    """The service's `/metrics`, parsed; `value(name, **labels)` sums the matching samples."""

    samples: list[MetricSample]
    text: str

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples called `name` whose labels include `labels` (None: there are none)."""
        matching = [
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(matching) if matching else None


class BatchStream:
    """The records of a batch as episodes end (`async for`); `summary` once they are all in.

    Leaving the loop early (or `aclose`) closes the connection, and the service cancels the episodes
    still running.
    """

    def __init__(self, client: AsyncSparringClient, body: dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._lines: AsyncIterator[Record] | None = None
        self.summary: BatchSummary | None = None
        """The batch's summary, set when the stream has ended."""

    def __aiter__(self) -> AsyncIterator[Record]:
        if self._lines is None:
            self._lines = self._read()
        return self._lines

    async def aclose(self) -> None:
        """Stop reading; the service cancels what is still running."""
        if self._lines is not None:
            await self._lines.aclose()  # type: ignore[attr-defined]

    async def _read(self) -> AsyncIterator[Record]:
        async with self._client._open("POST", "/v1/rollouts/batch", self._body, stream=True) as response:
            async for line in response.content:
                if not line.strip():
                    continue
                item = orjson.loads(line)
                if isinstance(item, dict) and set(item) == {"summary"}:
                    self.summary = BatchSummary(**item["summary"])
                    continue
                yield item
        if self.summary is None:
            raise ServiceUnavailable("POST /v1/rollouts/batch: the stream ended before its summary line", 0)


class AsyncSparringClient:
    """The service's HTTP API as typed coroutines; one pooled connection set per client (close it)."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout_s: float = 600.0, connect_timeout_s: float = 10.0
    ) -> None:
        """`timeout_s` bounds each answer (for a batch stream: the wait for each next line); a rollout of many
        repeats on a busy service may need more."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        for name, value in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number of seconds above 0, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncSparringClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (idempotent)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- rollouts ----------------------------------------------------------------------------------------

    async def rollouts(
        self,
        task: Mapping[str, Any],
        *,
        env: str | None = None,
        repeats: int = 1,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Record]:
        """Play one task `repeats` times; its records, in repeat order. `settings`: the request's overrides."""
        body = _without_none({"task": dict(task), "env": env, "repeats": repeats, "settings": _dict(settings)})
        answer = await self._json("POST", "/v1/rollouts", body)
        return list(answer["records"])

    def batch(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        env: str | None = None,
        repeats: int = 1,
        concurrency: int | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> BatchStream:
        """Play many tasks; iterate the stream for records as episodes end, then read its `summary`."""
        body = _without_none(
            {
                "tasks": [dict(task) for task in tasks],
                "env": env,
                "repeats": repeats,
                "concurrency": concurrency,
                "settings": _dict(settings),
            }
        )
        return BatchStream(self, body)

    # -- weight sync -------------------------------------------------------------------------------------

    async def pause(self, mode: PauseMode, *, timeout_s: float | None = None) -> WeightStep:
        """Pause generation on every policy replica (keep, wait or abort what is in flight)."""
        body = _without_none({"mode": mode, "timeout_s": timeout_s})
        return _step(await self._json("POST", "/v1/weights/pause", body))

    async def update_weights(self, version: str, *, adapter: str | None = None) -> WeightStep:
        """Set the weights' version everywhere; with `adapter` (a folder on the vLLM machines) load it first."""
        body = _without_none({"version": version, "adapter": adapter})
        return _step(await self._json("POST", "/v1/weights/update", body))

    async def resume(self) -> WeightStep:
        """Resume generation everywhere."""
        return _step(await self._json("POST", "/v1/weights/resume", None))

    async def weights(self) -> WeightsState:
        """The version, the pause and each replica."""
        data = await self._json("GET", "/v1/weights", None)
        replicas = [ReplicaWeights(**replica) for replica in data.pop("replicas")]
        return WeightsState(**data, replicas=replicas)

    # -- the rest ----------------------------------------------------------------------------------------

    async def metrics(self) -> Metrics:
        """The service's Prometheus metrics (episodes, model-call latency, HTTP requests), parsed."""
        async with self._open("GET", "/metrics", None) as response:
            text = await response.text()
        samples = [
            MetricSample(sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
        return Metrics(samples, text)

    async def envs(self) -> list[dict[str, Any]]:
        """The environments: tool schemas per actor and the settings they run with."""
        return list((await self._json("GET", "/v1/envs", None))["envs"])

    async def ready(self) -> bool:
        """Whether every model endpoint answers (`/readyz`)."""
        try:
            await self._json("GET", "/readyz", None)
        except ServiceUnavailable as exc:
            if exc.status == 503:
                return False
            raise
        return True

    # -- HTTP --------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def _json(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        async with self._open(method, path, body) as response:
            raw = await response.read()
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ServiceUnavailable(f"{method} {path}: expected a JSON object, got {raw[:200]!r}", response.status)
        return data

    def _open(self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool = False) -> _Answer:
        return _Answer(self, method, path, body, stream)


class _Answer:
    """`async with`: a 2xx answer to read, or the error it maps to (raised before the block runs)."""

    def __init__(
        self, client: AsyncSparringClient, method: str, path: str, body: dict[str, Any] | None, stream: bool
    ) -> None:
        self._client, self._method, self._path, self._body, self._stream = client, method, path, body, stream
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self._client
        timeout = client._stream_timeout if self._stream else client._timeout
        data = _dumps(self._body) if self._body is not None else None
        where = f"{self._method} {self._path}"
        try:
            response = await client._http().request(
                self._method, client.base_url + self._path, data=data, timeout=timeout
            )
        except TimeoutError:
            raise ServiceUnavailable(f"{where}: no answer within {timeout.total or timeout.sock_read:g} s", 0) from None
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"{where}: {type(exc).__name__}: {exc}", 0) from None
        if response.status >= 400:
            try:
                raw = await response.read()
            finally:
                response.release()
            raise _error(where, self._path, response.status, raw, response.headers.get("Retry-After"))
        self._response = response
        return response

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.release()
        if isinstance(exc, TimeoutError):
            raise ServiceUnavailable(f"{self._method} {self._path}: the answer stopped coming", 0) from exc
        if isinstance(exc, aiohttp.ClientError):
            raise ServiceUnavailable(f"{self._method} {self._path}: {type(exc).__name__}: {exc}", 0) from exc


class SparringClient:
    """The same API, blocking: every call runs on the client's own event loop in its own thread."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout_s: float = 600.0, connect_timeout_s: float = 10.0
    ) -> None:
        self._async = AsyncSparringClient(
            base_url, api_key=api_key, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )
        self.base_url = self._async.base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sparring-client", daemon=True)
        self._thread.start()

    def __enter__(self) -> SparringClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the client's thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def rollouts(
        self,
        task: Mapping[str, Any],
        *,
        env: str | None = None,
        repeats: int = 1,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Record]:
        """See `AsyncSparringClient.rollouts`."""
        return self._run(self._async.rollouts(task, env=env, repeats=repeats, settings=settings))

    def batch(
        self,
        tasks: Iterable[Mapping[str, Any]],
        *,
        env: str | None = None,
        repeats: int = 1,
        concurrency: int | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> SyncBatchStream:
        """See `AsyncSparringClient.batch`; iterate for records, then read `summary`."""
        stream = self._async.batch(tasks, env=env, repeats=repeats, concurrency=concurrency, settings=settings)
        return SyncBatchStream(self, stream)

    def pause(self, mode: PauseMode, *, timeout_s: float | None = None) -> WeightStep:
        """See `AsyncSparringClient.pause`."""
        return self._run(self._async.pause(mode, timeout_s=timeout_s))

    def update_weights(self, version: str, *, adapter: str | None = None) -> WeightStep:
        """See `AsyncSparringClient.update_weights`."""
        return self._run(self._async.update_weights(version, adapter=adapter))

    def resume(self) -> WeightStep:
        """See `AsyncSparringClient.resume`."""
        return self._run(self._async.resume())

    def weights(self) -> WeightsState:
        """See `AsyncSparringClient.weights`."""
        return self._run(self._async.weights())

    def metrics(self) -> Metrics:
        """See `AsyncSparringClient.metrics`."""
        return self._run(self._async.metrics())

    def envs(self) -> list[dict[str, Any]]:
        """See `AsyncSparringClient.envs`."""
        return self._run(self._async.envs())

    def ready(self) -> bool:
        """See `AsyncSparringClient.ready`."""
        return self._run(self._async.ready())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this SparringClient is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


class SyncBatchStream:
    """A batch's records, blocking (`for record in stream`); `summary` once they are all in."""

    def __init__(self, client: SparringClient, stream: BatchStream) -> None:
        self._client = client
        self._stream = stream

    @property
    def summary(self) -> BatchSummary | None:
        return self._stream.summary

    def __iter__(self) -> Iterator[Record]:
        lines = aiter(self._stream)
        try:
            while True:
                try:
                    yield self._client._run(_next(lines))
                except StopAsyncIteration:
                    return
        finally:
            self._client._run(self._stream.aclose())

    def close(self) -> None:
        """Stop reading; the service cancels what is still running."""
        self._client._run(self._stream.aclose())


async def _next(lines: AsyncIterator[Record]) -> Record:
    return await anext(lines)


def _error(where: str, path: str, status: int, raw: bytes, retry_after: str | None) -> ServiceError:
    """The sparring error an error answer maps to (see the module docstring)."""
    try:
        detail: Any = orjson.loads(raw).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        detail = raw[:500].decode("utf-8", "replace")
    shown = detail if isinstance(detail, str) else json.dumps(detail)[:1000]
    message = f"{where}: HTTP {status}: {shown}"
    if path.startswith("/v1/weights/") and isinstance(detail, str):
        if status in (403, 409, 422):
            error: ServiceError = _WeightRefused(message, status, detail)
            return error
        if status == 502:
            return _WeightFailed(message, status, detail)
    if status == 401:
        return ServiceAuthError(message, status, detail)
    if status == 429:
        return ServiceOverloaded(message, status, detail, retry_after_s=_seconds(retry_after))
    if status < 500:
        return ServiceRequestError(message, status, detail)
    return ServiceUnavailable(message, status, detail)


class _WeightRefused(WeightUpdateRefused, ServiceRequestError):
    """`WeightUpdateRefused` as the service answered it (also a `ServiceRequestError`)."""

    def __init__(self, message: str, status: int, detail: object) -> None:
        ServiceRequestError.__init__(self, message, status, detail)


class _WeightFailed(WeightSyncFailed, ServiceUnavailable):
    """`WeightSyncFailed` as the service answered it (also a `ServiceUnavailable`)."""

    def __init__(self, message: str, status: int, detail: object) -> None:
        ServiceUnavailable.__init__(self, message, status, detail)


def _step(data: dict[str, Any]) -> WeightStep:
    return WeightStep(**data)


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _dict(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value is not None else None


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


def _dumps(body: dict[str, Any]) -> bytes:
    """orjson, or the standard library for integers beyond 64 bits (a task's own data)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


__all__ = [
    "AsyncSparringClient",
    "BatchStream",
    "BatchSummary",
    "MetricSample",
    "Metrics",
    "ReplicaWeights",
    "SparringClient",
    "SyncBatchStream",
    "WeightStep",
    "WeightsState",
]
