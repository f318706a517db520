"""The policy vLLM behind the gateway: pass-through requests on the one transport, sticky replicas.

Sessions are pinned to the least-loaded available replica when they start and stay there (vLLM's
prefix cache); a replica failing three times in a row is taken out and its sessions move on. 5xx
answers, connection errors and time-outs are retried with backoff, 4xx never; a stream is retried
only before its first byte reaches the agent (`Transport.open`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from sparring.models.client import EndpointConfig
from sparring.models.transport import Transport


class Upstream:
    """One policy endpoint (possibly several replicas), shared by every session of a gateway."""

    def __init__(self, endpoint: EndpointConfig) -> None:
        self.endpoint = endpoint
        self.transport = Transport.for_endpoint(endpoint, routing="least_loaded")
        replicas = self.transport.replicas
        assert replicas is not None  # an endpoint has at least one base URL
        self.replicas = replicas

    async def aclose(self) -> None:
        """Close the pooled session (idempotent)."""
        await self.transport.aclose()

    @asynccontextmanager
    async def post(
        self, path: str, payload: bytes, session_id: str, *, stream: bool = False
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answered request (status below 500), after retries of 5xx answers, connection errors and time-outs."""
        async with self.transport.open(
            path, payload, key=session_id, headers={"X-Session-ID": session_id}, stream=stream
        ) as response:
            yield response

    async def get(self, path: str, session_id: str) -> tuple[int, bytes]:
        """A GET (e.g. /models) on the session's replica, without retries."""
        return await self.transport.get(path, key=session_id)
