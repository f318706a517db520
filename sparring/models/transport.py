"""The one HTTP transport: what the model client, the gateway's upstream, the remote and openenv environments share.

- A pooled aiohttp session per event loop (a CLI run, a test, a server each have their own loop).
- Request slots: at most `max_connections` requests in flight; a time-out starts when a request is
  sent, not while it waits for a slot.
- Replicas (`ReplicaSet`): a request names a key (episode or session id); the key sticks to one
  replica, chosen by `routing` when it first appears and again on each retry (a replica taken out
  meanwhile hands its keys over). Without replicas, requests name whole URLs.
- Load: with least-loaded routing over several replicas, each replica's `/metrics` (vLLM's requests
  running and waiting, KV-cache usage) is read in the background every `LOAD_POLL_S` seconds, at most
  `METRICS_MAX_BYTES` of it, and handed to the replica set; a request never waits for it. A server
  without metrics (404) is not asked again. `watch_load()` starts the same poller for other readers
  (adaptive concurrency).
- Retries with exponential backoff on 5xx, connection errors and time-outs, never on 4xx.
- Errors: when the retries are spent, `unavailable` (the caller's class: `ModelUnavailable` for
  models, the remote environment's own for environments) with the URL and the last failure.
- WebSockets (`ws_connect`, for OpenEnv's stateful sessions) on the same per-loop session.

The per-call path is hot (thousands of calls a second across episodes): bodies are bytes, headers
are built once, and nothing here parses JSON.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from sparring.core.errors import ModelUnavailable
from sparring.models.latency import LatencyHistogram
from sparring.models.replicas import ReplicaSet, ServerLoad

Routing = Literal["least_loaded", "rendezvous"]
ROUTINGS: tuple[Routing, ...] = ("least_loaded", "rendezvous")
LOAD_POLL_S = 1.0
"""Seconds between two reads of a replica's /metrics."""
METRICS_MAX_BYTES = 1 << 20
"""The most of a /metrics answer read; the gauges sparring reads come first in vLLM's (a few kB)."""
_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}


class EndpointLike(Protocol):
    """What `Transport.for_endpoint` reads of an endpoint (models/client.py's EndpointConfig)."""

    # Read-only properties: a frozen dataclass's fields satisfy them, writable attributes would not.
    @property
    def base_urls(self) -> tuple[str, ...]: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def retry_backoff_s(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def routing(self) -> Routing: ...


@dataclass(slots=True)
class Reply:
    """An answered request (status below 500): where it went, its status, body, cookies after it, its time."""

    url: str
    status: int
    body: bytes
    latency_s: float
    cookies: dict[str, str]


class Transport:
    """Sends requests for one endpoint (its replicas) or, with no base URLs, to whole URLs."""

    @classmethod
    def for_endpoint(cls, endpoint: EndpointLike, *, routing: Routing | None = None) -> Transport:
        """The transport of one model endpoint: its replicas, key, time-out, retries, connection bound and
        routing (`routing` overrides the endpoint's)."""
        return cls(
            endpoint.base_urls,
            api_key=endpoint.api_key,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
            retry_backoff_s=endpoint.retry_backoff_s,
            max_connections=endpoint.max_connections,
            routing=routing or endpoint.routing,
        )

    def __init__(
        self,
        base_urls: Sequence[str] = (),
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.25,
        max_connections: int = 512,
        routing: Routing = "least_loaded",
        unavailable: type[Exception] = ModelUnavailable,
    ) -> None:
        self.replicas = ReplicaSet(base_urls) if base_urls else None
        self.routing = routing
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_connections = max_connections
        self.unavailable = unavailable
        self.latency = LatencyHistogram()  # answered requests only, retries and backoff included
        self.headers = {"Content-Type": "application/json"}
        self._ws_headers: dict[str, str] = {}
        if api_key:
            self.headers["Authorization"] = self._ws_headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watch_wanted = routing == "least_loaded" and self.replicas is not None and len(self.replicas.urls) > 1
        self._no_metrics: set[str] = set()
        self.load_poll_s = LOAD_POLL_S

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running loop (no cookie jar: cookies travel per request, explicitly)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
            if self._watch_wanted:
                self._start_watching()
        return self._session

    def watch_load(self, interval_s: float | None = None) -> None:
        """Read every replica's /metrics in the background from now on (on the running loop), until `aclose`;
        every `interval_s` seconds if given (the shortest asked for wins), else `LOAD_POLL_S`."""
        if interval_s is not None:
            self.load_poll_s = min(self.load_poll_s, interval_s)
        self._watch_wanted = self.replicas is not None
        self.session()
        if self._watch_wanted and (self._watcher is None or self._watcher.done()):
            self._start_watching()

    def _start_watching(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="sparring-load-poller")

    async def _watch(self) -> None:
        assert self.replicas is not None
        while True:
            urls = [url for url in self.replicas.urls if url not in self._no_metrics]
            if not urls:
                return
            await asyncio.gather(*(self._read_load(url) for url in urls))
            await asyncio.sleep(self.load_poll_s)

    async def _read_load(self, base_url: str) -> None:
        """One read of `base_url`'s metrics into the replica set; any failure just leaves the last reading."""
        assert self.replicas is not None
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 5.0))
        try:
            async with self.session().get(
                server_root(base_url) + "/metrics", headers=self.headers, timeout=timeout
            ) as response:
                if response.status == 404:
                    self._no_metrics.add(base_url)
                    return
                if response.status != 200:
                    return
                text = await response.content.read(METRICS_MAX_BYTES)
        except (TimeoutError, aiohttp.ClientError):
            return
        load = parse_server_load(text.decode("utf-8", "replace"), time.monotonic())
        if load is None:
            self._no_metrics.add(base_url)  # answers, but not vLLM's gauges: nothing to learn there
            return
        self.replicas.report_load(base_url, load)

    async def aclose(self) -> None:
        """Close the pooled session and stop reading metrics (idempotent; only on the loop that opened it)."""
        if self._watcher is not None:
            self._watcher.cancel()
            if self._loop is asyncio.get_running_loop():
                await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    def replica(self, key: str) -> str:
        """The replica `key` sticks to (chosen now if it has none, or if its replica was taken out)."""
        assert self.replicas is not None
        if self.routing == "least_loaded":
            return self.replicas.pick_least_loaded(key)
        return self.replicas.pick(key)

    async def _attempt(self, attempt: int, path: str, key: str) -> tuple[str | None, str]:
        """After the backoff a retry waits, the attempt's replica (None without replicas) and its URL."""
        if attempt:
            await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
        if self.replicas is None:
            return None, path
        replica = self.replica(key)
        return replica, replica.rstrip("/") + path

    def release(self, key: str) -> None:
        """`key` is done: forget its replica."""
        if self.replicas is not None:
            self.replicas.release(key)

    async def post(
        self,
        path: str,
        payload: bytes,
        *,
        key: str = "",
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
    ) -> Reply:
        """POST with bounded retries; the answer's body is read in full. 4xx answers come back, 5xx are retried."""
        session = self.session()
        slots = self._slots
        assert slots is not None
        sent_headers = {**self.headers, **headers} if headers else self.headers
        started: float | None = None  # includes failed attempts and backoff, not waiting for a slot
        last_error = ""
        url = path
        for attempt in range(self.max_retries + 1):
            replica, url = await self._attempt(attempt, path, key)
            async with slots:
                started = started or time.perf_counter()
                self._started(replica)
                healthy: bool | None = None  # None: cancelled, which says nothing about the replica
                try:
                    async with session.post(
                        url, data=payload, headers=sent_headers, cookies=cookies, timeout=self._timeout
                    ) as response:
                        body = await response.read()
                        status = response.status
                        after = {name: morsel.value for name, morsel in response.cookies.items()}
                    healthy = status < 500
                except TimeoutError:
                    healthy = False
                    last_error = f"no reply within {self.timeout_s:g} s"
                    continue
                except aiohttp.ClientError as exc:
                    healthy = False
                    last_error = f"{type(exc).__name__}: {exc}"
                    continue
                finally:
                    self._finished(replica, healthy)
            if status < 500:
                latency = time.perf_counter() - started
                self.latency.add(latency)
                return Reply(url, status, body, latency, {**cookies, **after} if cookies else after)
            last_error = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
        raise self.unavailable(f"{url}: failed after {self.max_retries + 1} attempts; last: {last_error}")

    @asynccontextmanager
    async def open(
        self, path: str, payload: bytes, *, key: str, headers: Mapping[str, str] | None = None, stream: bool = False
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answered POST (below 500) whose body the caller reads, e.g. a stream to pass on as it comes.

        Retried like `post` until the answer starts; a stream may run long, so its time-out bounds each
        read instead of the whole reply. The replica's health is settled when the block ends: healthy if
        the body was read, failing on a connection error or time-out while reading, neither if cancelled.
        """
        session = self.session()
        sent_headers = {**self.headers, **headers} if headers else self.headers
        timeout = self._stream_timeout if stream else self._timeout
        last_error = ""
        url = path
        for attempt in range(self.max_retries + 1):
            replica, url = await self._attempt(attempt, path, key)
            self._started(replica)
            try:
                response = await session.post(url, data=payload, headers=sent_headers, timeout=timeout)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._finished(replica, False)
                last_error = f"no reply within {self.timeout_s:g} s" if isinstance(exc, TimeoutError) else repr(exc)
                continue
            except asyncio.CancelledError:
                self._finished(replica, None)
                raise
            if response.status >= 500:
                try:
                    detail = (await response.read())[:300].decode("utf-8", "replace")
                except (TimeoutError, aiohttp.ClientError):
                    detail = ""
                finally:
                    response.release()
                self._finished(replica, False)
                last_error = f"HTTP {response.status}: {detail}"
                continue
            healthy: bool | None = None
            try:
                yield response
                healthy = True
            except (TimeoutError, aiohttp.ClientError):
                healthy = False
                raise
            finally:
                response.release()
                self._finished(replica, healthy)
            return
        raise self.unavailable(f"{url}: failed after {self.max_retries + 1} attempts; last: {last_error}")

    async def get(self, path: str, *, key: str = "", replica: str | None = None) -> tuple[int, bytes]:
        """One GET without retries, on `key`'s replica (or the named one): e.g. /models, /metrics."""
        base = replica or (self.replica(key) if self.replicas is not None else "")
        async with self.session().get(base.rstrip("/") + path, headers=self.headers, timeout=self._timeout) as reply:
            return reply.status, await reply.read()

    async def ws_connect(self, url: str, *, max_msg_size: int) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket on the running loop's pooled session (an OpenEnv episode's session), no retries.

        The handshake is bounded by the transport's time-out; pings from the server are answered. A
        connection failure raises `unavailable` with the URL.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.session().ws_connect(
                    url, headers=self._ws_headers, heartbeat=None, autoping=True, max_msg_size=max_msg_size
                )
        except TimeoutError:
            raise self.unavailable(f"{url}: no WebSocket handshake within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise self.unavailable(f"{url}: cannot open a WebSocket: {type(exc).__name__}: {exc}") from None

    def _started(self, replica: str | None) -> None:
        if replica is not None and self.replicas is not None:
            self.replicas.started(replica)

    def _finished(self, replica: str | None, healthy: bool | None) -> None:
        if replica is not None and self.replicas is not None:
            self.replicas.finished(replica, ok=healthy)


def server_root(base_url: str) -> str:
    """The server's root URL for an OpenAI base URL (`http://h:8000/v1` -> `http://h:8000`): where vLLM
    serves /metrics and its dev-mode endpoints."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def parse_server_load(text: str, at: float) -> ServerLoad | None:
    """vLLM's requests running and waiting (summed over its engines) and KV-cache usage (the highest) from
    Prometheus text; None when the gauges are not there or not finite numbers."""
    seen: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        labels_end = line.rfind("}")
        if labels_end >= 0:
            name, values = line.split("{", 1)[0], line[labels_end + 1 :].split()
        else:
            name, *values = line.split()
        field_name = _GAUGES.get(name)
        if field_name is None:
            continue
        try:
            value = float(values[0])
        except (IndexError, ValueError):
            return None
        if not math.isfinite(value) or value < 0:
            return None
        seen.setdefault(field_name, []).append(value)
    if len(seen) < len(_GAUGES):
        return None
    return ServerLoad(
        running=sum(seen["running"]),
        waiting=sum(seen["waiting"]),
        kv_cache_usage=min(max(seen["kv_cache_usage"]), 1.0),
        at=at,
    )
