"""The rollout service behind the HTTP routes: admission, graphs, the batch runner, shutdown.

Every request, single or batch, plays its episodes through the one batch runner
(`sparring.rollouts.batch.BatchRunner`), on a graph shared by all requests with the same environment
and sampling settings. Admission goes through the `EpisodeGate` (bounded slots and queue), and each
episode holds a slot while it plays. On shutdown the gate drains (nothing new starts), every running
batch gets `stop(grace_s)`, and episodes that never started come back as `aborted` /
`interrupted` records, so a client gets one record for every episode it asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from langgraph.graph.state import CompiledStateGraph
from prometheus_client import CollectorRegistry

from sparring.envs.registry import get_environment
from sparring.graphs.context import EpisodeConfig
from sparring.graphs.episode import build_graph
from sparring.models.latency import LatencyHistogram
from sparring.models.pool import endpoint_config
from sparring.nodes.deps import EpisodeDeps
from sparring.rollouts.batch import INTERRUPTED, BatchItem, BatchRunner
from sparring.rollouts.record import build_record
from sparring.rollouts.runner import new_episode_id
from sparring.server.gate import EpisodeGate
from sparring.server.metrics import ServiceMetrics
from sparring.server.settings import ServerSettings
from sparring.web.outbound import AllowList


class ShuttingDown(Exception):
    """The server is draining; the request should go to another replica or come back later."""


@dataclass
class _Graph:
    graph: CompiledStateGraph
    deps: EpisodeDeps
    users: int = 0


class _ServiceRunner(BatchRunner):
    """The batch runner on the service's shared graphs (instead of graphs built per request)."""

    def __init__(self, play: Play, concurrency: int) -> None:
        super().__init__(play.config_for, concurrency=concurrency)
        self._request = play

    def graph_for(self, env_name: str) -> tuple[CompiledStateGraph, EpisodeDeps]:
        graph = self._request.graph_for(env_name)
        return graph.graph, graph.deps


@dataclass
class Play:
    """One admitted request: its episodes, the room it claimed, its graphs, and (after `records`) its summary."""

    service: RolloutService
    items: list[BatchItem]
    overrides: dict[str, Any]
    concurrency: int
    claimed: int
    graphs: dict[str, _Graph] = field(default_factory=dict)
    released: bool = False
    playing: set[tuple[int, int]] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    stop_reasons: dict[str, int] = field(default_factory=dict)
    rewards: list[float] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    async def records(self) -> AsyncIterator[dict[str, Any]]:
        """One record per item, in completion order; closing this early cancels what is still running."""
        gate = self.service.gate
        playing = self.playing
        next_item = 0

        async def source() -> AsyncIterator[BatchItem]:
            nonlocal next_item
            while next_item < len(self.items):
                if not await gate.acquire():
                    return  # draining: what has not started is reported as interrupted below
                item = self.items[next_item]
                next_item += 1
                playing.add((item.task_index, item.repeat_index))
                yield item

        runner = _ServiceRunner(self, self.concurrency)
        self.service.runners.add(runner)
        try:
            if self.service.draining:
                runner.stop(0)
            async for record in runner.run(source()):
                playing.discard((record["task_index"], record["repeat_index"]))
                gate.release(record["timing"]["wall_s"])
                self._trim_claim(len(self.items) - next_item + len(playing))
                yield self._count(record)
            for item in self.items[next_item:]:
                yield self._count(_not_started(item))
        finally:
            self.service.runners.discard(runner)
            self.release()

    def release(self) -> None:
        """Give back the graph, the slots of episodes cancelled with the consumer, and the claimed room (once)."""
        if self.released:
            return
        self.released = True
        for graph in self.graphs.values():
            graph.users -= 1
        for _ in self.playing:
            self.service.gate.release()
        self.playing.clear()
        self.service.gate.unclaim(self.claimed)
        self.claimed = 0
        self.service.evict_idle()

    def config_for(self, env: str) -> EpisodeConfig:
        """The settings this request's episodes of `env` run with."""
        return self.service.config(env, self.overrides)

    def graph_for(self, env: str) -> _Graph:
        """The shared graph for `env` at this request's settings, leased on first use."""
        graph = self.graphs.get(env)
        if graph is None:
            graph = self.graphs[env] = self.service.lease(env, self.config_for(env))
        return graph

    def summary(self) -> dict[str, Any]:
        """Counts by status and stop_reason, mean reward, wall time: the batch stream's last line."""
        return {
            "episodes": sum(self.counts.values()),
            "counts": dict(self.counts),
            "stop_reasons": dict(self.stop_reasons),
            "mean_reward": sum(self.rewards) / len(self.rewards) if self.rewards else None,
            "wall_s": round(time.monotonic() - self.started_at, 6),
        }

    def _count(self, record: dict[str, Any]) -> dict[str, Any]:
        self.service.metrics.observe(record)
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        reason = record["stop_reason"] or ""
        self.stop_reasons[reason] = self.stop_reasons.get(reason, 0) + 1
        if record["reward"] is not None:
            self.rewards.append(record["reward"])
        return record

    def _trim_claim(self, still_needed: int) -> None:
        """Give back room this request can no longer use (fewer episodes left than its concurrency)."""
        excess = self.claimed - min(self.claimed, still_needed)
        if excess > 0:
            self.service.gate.unclaim(excess)
            self.claimed -= excess


class RolloutService:
    """State shared by all requests of one server."""

    def __init__(
        self,
        settings: ServerSettings,
        config_for: Callable[[str], EpisodeConfig],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._config_for = config_for
        self._configs: dict[str, EpisodeConfig] = {}
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self.gate = EpisodeGate(settings.max_concurrent_episodes, settings.max_queued_episodes)
        self.runners: set[BatchRunner] = set()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set at start-up; signal handlers call into it
        self.metrics = ServiceMetrics(registry, self.gate, self.model_latency)

    def base_config(self, env: str) -> EpisodeConfig:
        """The settings this server plays `env` with (flags and variables, as for `sparring run`)."""
        config = self._configs.get(env)
        if config is None:
            config = self._configs[env] = self._config_for(env)
        return config

    def config(self, env: str, overrides: dict[str, Any]) -> EpisodeConfig:
        """The base settings with a request's overrides (already checked against the bounds)."""
        return replace(self.base_config(env), **overrides) if overrides else self.base_config(env)

    def check_env_url(self, env: str, task: dict[str, Any], where: str) -> None:
        """Refuse a task whose `env_url` is not `--env-url` or an `--allow-env-url` (403, nothing sent to it)."""
        url = task.get("env_url")
        if url is not None:
            allowed = AllowList([*self.settings.env_urls, self.base_config(env).env_url])
            allowed.check(url, f"{where}.env_url", "--env-url and --allow-env-url")

    def admit(
        self, tasks: list[tuple[str, dict[str, Any]]], repeats: int, overrides: dict[str, Any], concurrency: int
    ) -> Play:
        """Claim room for a request's (env, task) pairs times `repeats` (Overloaded: 429), ready to play."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; send the request to another replica or retry later")
        items = [BatchItem(t, r, task, env) for t, (env, task) in enumerate(tasks) for r in range(repeats)]
        claimed = min(len(items), concurrency)
        self.gate.claim(claimed)
        return Play(self, items, overrides, claimed, claimed)

    def lease(self, env: str, config: EpisodeConfig) -> _Graph:
        """The shared graph for this environment and endpoint/sampling settings (`Play.release` gives it back)."""
        key = _graph_key(env, config)
        graph = self._graphs.get(key)
        if graph is None:
            environment = get_environment(env)
            deps = EpisodeDeps(environment)
            graph = self._graphs[key] = _Graph(build_graph(environment, deps), deps)
        self._graphs.move_to_end(key)
        graph.users += 1
        return graph

    def evict_idle(self) -> None:
        """Close the least recently used idle graphs (their model clients) beyond the configured number."""
        for key in list(self._graphs):
            if len(self._graphs) <= self.settings.max_sampling_variants:
                return
            if self._graphs[key].users == 0:
                task = asyncio.get_running_loop().create_task(self._graphs.pop(key).deps.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def model_latency(self) -> dict[str, LatencyHistogram]:
        """Per role, the latency of every successful model call on this server's clients."""
        merged: dict[str, LatencyHistogram] = {}
        for graph in self._graphs.values():
            for role, histogram in graph.deps.clients.latency().items():
                merged.setdefault(role, LatencyHistogram()).merge(histogram)
        return merged

    def begin_shutdown(self, grace_s: float) -> None:
        """Start nothing new; running episodes get `grace_s`, then end as aborted records."""
        self.draining = True
        self.gate.drain()
        for runner in list(self.runners):
            runner.stop(grace_s)

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Whether every model endpoint of the default environment answers `GET /models`."""
        config = self.base_config(self.settings.default_env)
        timeout = aiohttp.ClientTimeout(total=self.settings.readiness_timeout_s)
        report: dict[str, dict[str, Any]] = {}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for role in ("policy", "user"):
                endpoint = endpoint_config(config, role)
                headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
                checks = await asyncio.gather(*(_probe(session, url, headers) for url in endpoint.base_urls))
                report[role] = {"model": endpoint.model, "urls": dict(zip(endpoint.base_urls, checks, strict=True))}
        ready = all(check == "ok" for role in report.values() for check in role["urls"].values())
        return ready, report

    async def aclose(self) -> None:
        """Close every graph's model clients."""
        for graph in self._graphs.values():
            await graph.deps.aclose()
        self._graphs.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _probe(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> str:
    """'ok', or what went wrong, for one OpenAI-compatible server."""
    try:
        async with session.get(base_url.rstrip("/") + "/models", headers=headers) as response:
            return "ok" if response.status == 200 else f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _graph_key(env: str, config: EpisodeConfig) -> tuple[Any, ...]:
    return (env, endpoint_config(config, "policy"), endpoint_config(config, "user"), config.policy_tokenizer)


def _not_started(item: BatchItem) -> dict[str, Any]:
    """The record of an episode the server never started because it shut down first."""
    state = {
        "task": item.task,
        "status": "aborted",
        "stop_reason": INTERRUPTED,
        "error": {"type": "Interrupted", "message": "the server shut down before this episode started"},
    }
    episode_id = new_episode_id(item.task_index, item.repeat_index)
    return build_record(
        state, env=item.env, episode_id=episode_id, task_index=item.task_index, repeat_index=item.repeat_index
    )
