"""Clients for the two roles, made once per distinct endpoint setting and reused by every episode."""

from __future__ import annotations

from typing import Literal

from sparring.graphs.context import EpisodeConfig
from sparring.models.client import EndpointConfig, ModelClient

Role = Literal["policy", "user"]


def endpoint_config(config: EpisodeConfig, role: Role) -> EndpointConfig:
    """The endpoint settings of one role, read off the run's settings."""
    prefix = f"{role}_"
    return EndpointConfig(
        base_urls=tuple(getattr(config, prefix + "base_urls")),
        model=getattr(config, prefix + "model"),
        api_key=getattr(config, prefix + "api_key"),
        temperature=getattr(config, prefix + "temperature"),
        top_p=getattr(config, prefix + "top_p"),
        max_tokens=getattr(config, prefix + "max_tokens"),
        timeout_s=config.request_timeout_s,
        max_retries=config.max_retries,
        capture_tokens=role == "policy",
    )


class ClientPool:
    """Pooled clients keyed by endpoint settings, so a settings change (Studio) gets a new client."""

    def __init__(self) -> None:
        self._clients: dict[EndpointConfig, ModelClient] = {}
        self._last: tuple[EpisodeConfig, ModelClient, ModelClient] | None = None

    def clients(self, config: EpisodeConfig) -> tuple[ModelClient, ModelClient]:
        """(policy, user) clients for these settings; the common case is one dict-free identity check."""
        last = self._last
        if last is not None and last[0] is config:
            return last[1], last[2]
        policy, user = (self._client(endpoint_config(config, role)) for role in ("policy", "user"))
        self._last = (config, policy, user)
        return policy, user

    def _client(self, endpoint: EndpointConfig) -> ModelClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = ModelClient(endpoint)
        return client

    def release(self, episode_id: str) -> None:
        """Forget a finished episode's replica pins in every client."""
        for client in self._clients.values():
            client.replicas.release(episode_id)

    async def aclose(self) -> None:
        """Close every pooled HTTP session."""
        for client in self._clients.values():
            await client.aclose()
