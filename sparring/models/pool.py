"""Clients for the two roles, made once per distinct endpoint and reused by every episode that uses it.

Sampling is not part of an endpoint (it travels per call), so requests with different temperatures
share a client. A pool that meets more distinct endpoints than `max_clients` (a service whose
clients name their own) closes the least recently used ones that no episode is using.

Policy clients of the same servers share one `GenerationControl` (`policy_control`), made before any
client and outliving them: the weight sync closes it, sets its adapter and version, and opens it, and a
client made later (another environment's settings, a request's) starts from that state; replicas the
weight sync took out stay out in every policy client of those servers (`take_out`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Literal

from sparring.core.settings import EpisodeSettings
from sparring.models.client import EndpointConfig, ModelClient
from sparring.models.generation import GenerationControl
from sparring.models.latency import LatencyHistogram

Role = Literal["policy", "user", "judge"]
ReplicaStats = dict[str, dict[str, dict[str, int | bool]]]


def endpoint_config(settings: EpisodeSettings, role: Role) -> EndpointConfig:
    """The endpoint of one role, read off the run's settings."""
    if role == "policy":
        urls, model, api_key = settings.policy_base_urls, settings.policy_model, settings.policy_api_key
    elif role == "judge":
        urls, model, api_key = settings.judge_base_urls or [], settings.judge_model, settings.judge_api_key
    else:
        urls, model, api_key = settings.user_base_urls, settings.user_model, settings.user_api_key
    return EndpointConfig(
        base_urls=tuple(urls),
        model=model,
        api_key=api_key,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        max_connections=settings.max_connections,
        capture_tokens=role == "policy",
        routing=settings.routing,
    )


class ClientPool:
    """Pooled clients keyed by endpoint, so a settings change (Studio, a request) gets the right client."""

    def __init__(self, max_clients: int = 32) -> None:
        self.max_clients = max_clients
        self._clients: OrderedDict[EndpointConfig, ModelClient] = OrderedDict()
        self._roles: dict[EndpointConfig, Role] = {}
        self._last: tuple[EpisodeSettings, ModelClient, ModelClient] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._retired_replicas: ReplicaStats = {}  # what closed clients did, so the totals stay whole
        self._retired_latency: dict[str, LatencyHistogram] = {}
        self._controls: dict[frozenset[str], GenerationControl] = {}
        self._removed: dict[frozenset[str], dict[str, str]] = {}

    def clients(self, settings: EpisodeSettings) -> tuple[ModelClient, ModelClient]:
        """(policy, user) clients for these settings; the common case is one identity check."""
        last = self._last
        if last is not None and last[0] is settings:
            return last[1], last[2]
        policy, user = (self._client(endpoint_config(settings, role), role) for role in ("policy", "user"))
        self._last = (settings, policy, user)
        return policy, user

    def judge(self, settings: EpisodeSettings) -> ModelClient | None:
        """The judge's client for these settings, or None when no judge is configured."""
        if not settings.judge_base_urls:
            return None
        return self._client(endpoint_config(settings, "judge"), "judge")

    def _client(self, endpoint: EndpointConfig, role: Role) -> ModelClient:
        client = self._clients.get(endpoint)
        if client is None:
            servers = frozenset(endpoint.base_urls)
            control = self.policy_control(endpoint.base_urls) if role == "policy" else None
            client = self._clients[endpoint] = ModelClient(endpoint, control)
            self._roles[endpoint] = role
            if role == "policy" and client.replicas is not None:
                for url, reason in self._removed.get(servers, {}).items():
                    client.replicas.take_out(url, reason)
            self._evict_idle()
        self._clients.move_to_end(endpoint)
        return client

    def policy_control(self, urls: tuple[str, ...] | list[str]) -> GenerationControl:
        """The control every policy client of these servers shares (made on first use)."""
        servers = frozenset(urls)
        control = self._controls.get(servers)
        if control is None:
            control = self._controls[servers] = GenerationControl()
        return control

    def policy_clients(self, urls: tuple[str, ...] | list[str]) -> list[ModelClient]:
        """The policy clients now open on exactly these servers."""
        servers = frozenset(urls)
        return [
            client
            for endpoint, client in self._clients.items()
            if self._roles[endpoint] == "policy" and frozenset(endpoint.base_urls) == servers
        ]

    def take_out(self, urls: tuple[str, ...] | list[str], url: str, reason: str) -> None:
        """No policy call to these servers goes to `url` until `put_back` (now and in clients made later)."""
        self._removed.setdefault(frozenset(urls), {})[url] = reason
        for client in self.policy_clients(urls):
            if client.replicas is not None:
                client.replicas.take_out(url, reason)

    def taken_out(self, urls: tuple[str, ...] | list[str]) -> dict[str, str]:
        """The replicas of these servers `take_out` took out, and why."""
        return dict(self._removed.get(frozenset(urls), {}))

    def put_back(self, urls: tuple[str, ...] | list[str], url: str) -> None:
        """Undo `take_out`."""
        self._removed.get(frozenset(urls), {}).pop(url, None)
        for client in self.policy_clients(urls):
            if client.replicas is not None:
                client.replicas.put_back(url)

    def _evict_idle(self) -> None:
        """Close the least recently used clients beyond `max_clients` that no episode is using."""
        for endpoint in list(self._clients):
            if len(self._clients) <= self.max_clients:
                return
            client = self._clients[endpoint]
            if client.replicas is not None and client.replicas.in_use():
                continue
            del self._clients[endpoint]
            role = self._roles.pop(endpoint)
            if client.replicas is not None:
                add_replica_stats(self._retired_replicas, {role: client.replicas.stats()})
            self._retired_latency.setdefault(role, LatencyHistogram()).merge(client.latency)
            try:
                task = asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no loop: the session (if any) belongs to a loop that is gone
                continue
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def replica_stats(self) -> ReplicaStats:
        """Per role, per replica URL: what `ReplicaSet.stats` counts (clients of one role are summed)."""
        merged: ReplicaStats = {}
        add_replica_stats(merged, self._retired_replicas)
        for endpoint, client in self._clients.items():
            if client.replicas is not None:
                add_replica_stats(merged, {self._roles[endpoint]: client.replicas.stats()})
        return merged

    def latency(self) -> dict[str, LatencyHistogram]:
        """Per role, the latencies of every answered call through this pool's clients."""
        merged: dict[str, LatencyHistogram] = {}
        for role, histogram in self._retired_latency.items():
            merged.setdefault(role, LatencyHistogram()).merge(histogram)
        for endpoint, client in self._clients.items():
            merged.setdefault(self._roles[endpoint], LatencyHistogram()).merge(client.latency)
        return merged

    def release(self, episode_id: str) -> None:
        """Forget a finished episode's replica pins in every client."""
        for client in self._clients.values():
            client.transport.release(episode_id)

    async def aclose(self) -> None:
        """Close every pooled HTTP session."""
        for client in self._clients.values():
            await client.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)


def add_replica_stats(into: ReplicaStats, stats: ReplicaStats) -> None:
    """Sum per-role, per-URL replica counts into `into` (a replica is available only if it is everywhere)."""
    for role, per_url in stats.items():
        for url, counts in per_url.items():
            target = into.setdefault(role, {}).setdefault(url, {})
            for key, value in counts.items():
                if isinstance(value, bool):
                    target[key] = bool(target.get(key, True)) and value
                else:
                    target[key] = int(target.get(key, 0)) + value
