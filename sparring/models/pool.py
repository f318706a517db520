"""Clients for the two roles, made once per distinct endpoint setting and reused by every episode."""

from __future__ import annotations

from typing import Literal

from sparring.graphs.context import EpisodeConfig
from sparring.models.client import EndpointConfig, ModelClient
from sparring.models.latency import LatencyHistogram

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
        stop=tuple(config.user_stop_strings) if role == "user" else (),
        timeout_s=config.request_timeout_s,
        max_retries=config.max_retries,
        max_connections=config.max_connections,
        capture_tokens=role == "policy",
    )


class ClientPool:
    """Pooled clients keyed by endpoint settings, so a settings change (Studio) gets a new client."""

    def __init__(self) -> None:
        self._clients: dict[EndpointConfig, ModelClient] = {}
        self._roles: dict[EndpointConfig, Role] = {}
        self._last: tuple[EpisodeConfig, ModelClient, ModelClient] | None = None

    def clients(self, config: EpisodeConfig) -> tuple[ModelClient, ModelClient]:
        """(policy, user) clients for these settings; the common case is one dict-free identity check."""
        last = self._last
        if last is not None and last[0] is config:
            return last[1], last[2]
        policy, user = (self._client(endpoint_config(config, role), role) for role in ("policy", "user"))
        self._last = (config, policy, user)
        return policy, user

    def _client(self, endpoint: EndpointConfig, role: Role) -> ModelClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = ModelClient(endpoint)
            self._roles[endpoint] = role
        return client

    def replica_stats(self) -> dict[str, dict[str, dict[str, int | bool]]]:
        """Per role, per replica URL: what `ReplicaSet.stats` counts (several clients of a role are summed)."""
        merged: dict[str, dict[str, dict[str, int | bool]]] = {}
        for endpoint, client in self._clients.items():
            add_replica_stats(merged, {self._roles[endpoint]: client.replicas.stats()})
        return merged

    def latency(self) -> dict[str, LatencyHistogram]:
        """Per role, the latencies of every successful call through this pool's clients."""
        merged: dict[str, LatencyHistogram] = {}
        for endpoint, client in self._clients.items():
            merged.setdefault(self._roles[endpoint], LatencyHistogram()).merge(client.latency)
        return merged

    def release(self, episode_id: str) -> None:
        """Forget a finished episode's replica pins in every client."""
        for client in self._clients.values():
            client.replicas.release(episode_id)

    async def aclose(self) -> None:
        """Close every pooled HTTP session."""
        for client in self._clients.values():
            await client.aclose()


def add_replica_stats(
    into: dict[str, dict[str, dict[str, int | bool]]], stats: dict[str, dict[str, dict[str, int | bool]]]
) -> None:
    """Sum per-role, per-URL replica counts into `into` (a replica is available only if it is everywhere)."""
    for role, per_url in stats.items():
        for url, counts in per_url.items():
            target = into.setdefault(role, {}).setdefault(url, {})
            for key, value in counts.items():
                if isinstance(value, bool):
                    target[key] = bool(target.get(key, True)) and value
                else:
                    target[key] = int(target.get(key, 0)) + value
