"""The policy vLLM behind the gateway: a pass-through POST on a pooled aiohttp session, sticky replicas.

Sessions are pinned to the least-loaded available replica when they start and stay there (vLLM's
prefix cache); a replica failing `failure_threshold` times in a row is taken out and its sessions move
on (`ReplicaSet`). 5xx answers, connection errors and time-outs are retried with backoff, 4xx never;
a stream is retried only before its first byte reaches the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from sparring.models.client import EndpointConfig, ModelUnavailable
from sparring.models.replicas import ReplicaSet


class Upstream:
    """One policy endpoint (possibly several replicas), shared by every session of a gateway."""

    def __init__(self, endpoint: EndpointConfig) -> None:
        self.endpoint = endpoint
        self.replicas = ReplicaSet(endpoint.base_urls)
        self._headers = {"Content-Type": "application/json"}
        if endpoint.api_key:
            self._headers["Authorization"] = f"Bearer {endpoint.api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.endpoint.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        """Close the pooled session (idempotent)."""
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    @asynccontextmanager
    async def post(
        self, path: str, payload: bytes, session_id: str, *, stream: bool = False
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answered request (status below 500), after retries of 5xx answers, connection errors and time-outs.

        The replica's health is settled when the block ends: healthy if the body was read, failing on a
        connection error or time-out while reading, neither if the agent went away (cancelled).
        """
        response, replica = await self._open(path, payload, session_id, stream)
        healthy: bool | None = None
        try:
            yield response
            healthy = True
        except (TimeoutError, aiohttp.ClientError):
            healthy = False
            raise
        finally:
            response.release()
            self.replicas.finished(replica, ok=healthy)

    async def get(self, path: str, session_id: str) -> tuple[int, bytes]:
        """A GET (e.g. /models) on the session's replica, without retries."""
        url = self.replicas.pick_least_loaded(session_id).rstrip("/") + path
        timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        async with self._http().get(url, headers=self._headers, timeout=timeout) as response:
            return response.status, await response.read()

    async def _open(
        self, path: str, payload: bytes, session_id: str, stream: bool
    ) -> tuple[aiohttp.ClientResponse, str]:
        http = self._http()
        headers = {**self._headers, "X-Session-ID": session_id}
        # A stream may legitimately run long: bound the wait for each read instead of the whole reply.
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=self.endpoint.timeout_s, sock_read=self.endpoint.timeout_s)
            if stream
            else aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        )
        last_error = ""
        url = ""
        for attempt in range(self.endpoint.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.endpoint.retry_backoff_s * 2 ** (attempt - 1))
            replica = self.replicas.pick_least_loaded(session_id)  # a replica taken out meanwhile hands over
            url = replica.rstrip("/") + path
            self.replicas.started(replica)
            try:
                response = await http.post(url, data=payload, headers=headers, timeout=timeout)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.replicas.finished(replica, ok=False)
                last_error = (
                    f"no reply within {self.endpoint.timeout_s:g} s" if isinstance(exc, TimeoutError) else repr(exc)
                )
                continue
            except asyncio.CancelledError:
                self.replicas.finished(replica, ok=None)
                raise
            if response.status < 500:
                return response, replica
            try:
                detail = (await response.read())[:300].decode("utf-8", "replace")
            except (TimeoutError, aiohttp.ClientError):
                detail = ""
            finally:
                response.release()
            self.replicas.finished(replica, ok=False)
            last_error = f"HTTP {response.status}: {detail}"
        raise ModelUnavailable(f"{url}: failed after {self.endpoint.max_retries + 1} attempts; last: {last_error}")
