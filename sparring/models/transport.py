"""The one HTTP transport: what the model client, the gateway's upstream, the remote and openenv environments share.

- A pooled aiohttp session per event loop (a CLI run, a test, a server each have their own loop).
- Request slots: at most `max_connections` requests in flight; a time-out starts when a request is
  sent, not while it waits for a slot.
- Replicas (`ReplicaSet`): a request names a key (episode or session id); the key sticks to one
  replica, chosen by `routing` when it first appears and again on each retry (a replica taken out
  meanwhile hands its keys over). Without replicas, requests name whole URLs.
- Retries with exponential backoff on 5xx, connection errors and time-outs, never on 4xx.
- Errors: when the retries are spent, `unavailable` (the caller's class: `ModelUnavailable` for
  models, the remote environment's own for environments) with the URL and the last failure.
- WebSockets (`ws_connect`, for OpenEnv's stateful sessions) on the same per-loop session.

The per-call path is hot (thousands of calls a second across episodes): bodies are bytes, headers
are built once, and nothing here parses JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

from sparring.core.errors import ModelUnavailable
from sparring.models.latency import LatencyHistogram
from sparring.models.replicas import ReplicaSet

Routing = Literal["least_loaded", "rendezvous"]


class EndpointLike(Protocol):
    """What `Transport.for_endpoint` reads of an endpoint (models/client.py's EndpointConfig)."""

    base_urls: tuple[str, ...]
    api_key: str | None
    timeout_s: float
    max_retries: int
    retry_backoff_s: float
    max_connections: int


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
    def for_endpoint(cls, endpoint: EndpointLike, *, routing: Routing = "rendezvous") -> Transport:
        """The transport of one model endpoint: its replicas, key, time-out, retries and connection bound."""
        return cls(
            endpoint.base_urls,
            api_key=endpoint.api_key,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
            retry_backoff_s=endpoint.retry_backoff_s,
            max_connections=endpoint.max_connections,
            routing=routing,
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
        routing: Routing = "rendezvous",
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

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running loop (no cookie jar: cookies travel per request, explicitly)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the pooled session (idempotent; only on the loop that opened it)."""
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
