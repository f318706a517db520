"""The rollout service behind the HTTP routes: admission, the engine, the batch runner, shutdown.

Every request, single or batch, plays its episodes through the one batch runner on the service's one
`Engine` (graphs per environment, model clients per endpoint, shared by all requests; a request's
settings are overrides for its own episodes). Admission goes through the `EpisodeGate` (bounded
slots and queue), and each episode holds a slot while it plays. On shutdown the gate drains
(nothing new starts), every running batch gets `stop(grace_s)`, and episodes that never started come
back as `aborted` / `interrupted` records, so a client gets one record for every episode it asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from sparring.core.ids import new_episode_id
from sparring.core.outbound import task_env_url
from sparring.core.record import aborted_record
from sparring.core.settings import EpisodeSettings
from sparring.engine.batch import INTERRUPTED, BatchItem, BatchRunner
from sparring.engine.engine import Engine
from sparring.engine.weights import WeightOptions
from sparring.models.latency import LatencyHistogram
from sparring.models.transport import Transport
from sparring.server.gate import EpisodeGate
from sparring.server.metrics import ServiceMetrics
from sparring.server.settings import ServerSettings


class ShuttingDown(Exception):
    """The server is draining; the request should go to another replica or come back later."""


@dataclass
class Play:
    """One admitted request: its episodes, the room it claimed, its graphs, and (after `records`) its summary."""

    service: RolloutService
    items: list[BatchItem]
    overrides: dict[str, Any]
    concurrency: int
    claimed: int
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

        runner = BatchRunner(
            self.service.engine, concurrency=self.concurrency, overrides=self.overrides, close_engine=False
        )
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
        """Give back the slots of episodes cancelled with the consumer, and the claimed room (once)."""
        if self.released:
            return
        self.released = True
        for _ in self.playing:
            self.service.gate.release()
        self.playing.clear()
        self.service.gate.unclaim(self.claimed)
        self.claimed = 0

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
        config_for: Callable[[str], EpisodeSettings],
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.engine = Engine(
            config_for,
            env=settings.default_env,
            max_clients=settings.max_sampling_variants,
            weight_options=WeightOptions(pause_timeout_s=settings.pause_timeout_s, adapter_roots=settings.adapter_dirs),
        )
        self.gate = EpisodeGate(settings.max_concurrent_episodes, settings.max_queued_episodes)
        self.runners: set[BatchRunner] = set()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set at start-up; signal handlers call into it
        self.metrics = ServiceMetrics(registry, self.gate, self.model_latency)

    def base_config(self, env: str) -> EpisodeSettings:
        """The settings this server plays `env` with (flags and variables, as for `sparring run`)."""
        return self.engine.settings_for(env)

    def config(self, env: str, overrides: dict[str, Any]) -> EpisodeSettings:
        """The base settings with a request's overrides (already checked against the bounds)."""
        return self.engine.settings_for(env, overrides)

    def check_env_url(self, env: str, task: dict[str, Any], where: str) -> None:
        """`OutboundRefused` (403) for a task whose `env_url` is not `--env-url` or an `--allow-env-url`.

        The seed node runs the same check (core/outbound.py); here it answers before anything is admitted.
        """
        config = self.base_config(env)
        task_env_url(task.get("env_url"), config.env_url, config.allow_env_urls, f"{where}.env_url")

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

    def model_latency(self) -> dict[str, LatencyHistogram]:
        """Per role, the latency of every answered model call on this server's clients."""
        return self.engine.stats().latency

    def begin_shutdown(self, grace_s: float) -> None:
        """Start nothing new; running episodes get `grace_s`, then end as aborted records."""
        self.draining = True
        self.gate.drain()
        for runner in list(self.runners):
            runner.stop(grace_s)

    async def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Whether every model endpoint of the default environment answers `GET /models`."""
        config = self.base_config(self.settings.default_env)
        clients = dict(zip(("policy", "user"), self.engine.clients.clients(config), strict=True))
        report: dict[str, dict[str, Any]] = {}
        for role, client in clients.items():
            urls = client.config.base_urls
            checks = await asyncio.gather(
                *(_probe(client.transport, url, self.settings.readiness_timeout_s) for url in urls)
            )
            report[role] = {"model": client.config.model, "urls": dict(zip(urls, checks, strict=True))}
        ready = all(check == "ok" for role in report.values() for check in role["urls"].values())
        return ready, report

    async def aclose(self) -> None:
        """Close the engine's model clients and environment resources."""
        await self.engine.aclose()


async def _probe(transport: Transport, base_url: str, timeout_s: float) -> str:
    """'ok', or what went wrong, for one OpenAI-compatible server."""
    try:
        status, _ = await asyncio.wait_for(transport.get("/models", replica=base_url), timeout_s)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return "ok" if status == 200 else f"HTTP {status}"


def _not_started(item: BatchItem) -> dict[str, Any]:
    """The record of an episode the server never started because it shut down first."""
    return aborted_record(
        item.task,
        env=item.env,
        episode_id=new_episode_id(item.task_index, item.repeat_index),
        stop_reason=INTERRUPTED,
        error=("Interrupted", "the server shut down before this episode started"),
        task_index=item.task_index,
        repeat_index=item.repeat_index,
    )
