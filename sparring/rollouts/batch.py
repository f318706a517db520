"""The one batch runner: many episodes at bounded concurrency, records in completion order.

Every bulk face runs episodes through it: `sparring collect`, the HTTP batch endpoint and the Ray
workers (each on its own shard). API:

    runner = BatchRunner(config, concurrency=8)     # config: EpisodeConfig, or env name -> EpisodeConfig
    async for record in runner.run(items):         # items: (async) iterable of BatchItem
        ...                                          # records as episodes finish
    runner.stop(grace_s=10)                          # e.g. on SIGINT/SIGTERM: no new items; in-flight
                                                     # ones get grace_s, then end as aborted records
    runner.replica_stats()                           # {role: {url: {requests, episodes, ...}}}
    runner.latency()                                 # {role: LatencyHistogram} of model calls
    await runner.aclose()                            # closes model clients and environment resources

`run` keeps a fixed pool of `concurrency` workers pulling from the item source (100k items never
means 100k tasks), builds one graph per environment name and reuses it, and holds at most
2 x concurrency finished-but-unread records (a slow reader slows the workers down). Every item a
worker took yields exactly one record: after `stop`, an episode still running when the grace period
ends is cancelled and yields `status: aborted, stop_reason: interrupted`. If the reader stops
iterating (an HTTP client went away: closing or cancelling the generator), the workers and their
in-flight episodes are cancelled at once and nothing keeps running for nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from sparring.envs.registry import get_environment
from sparring.graphs.context import EpisodeConfig
from sparring.graphs.episode import build_graph
from sparring.models.latency import LatencyHistogram
from sparring.models.pool import add_replica_stats
from sparring.nodes.deps import EpisodeDeps
from sparring.rollouts.record import build_record
from sparring.rollouts.runner import new_episode_id, run_episode

INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One episode to play: which task (and which repeat of it), and on which environment."""

    task_index: int
    repeat_index: int
    task: dict[str, Any]
    env: str


class _SourceDone(Exception):
    """The item source has nothing more."""


class BatchRunner:
    """Runs items on a fixed pool of workers; see the module docstring for the contract."""

    def __init__(
        self,
        config: EpisodeConfig | Callable[[str], EpisodeConfig],
        *,
        concurrency: int = 8,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._config = config
        self._configs: dict[str, EpisodeConfig] = {}
        self._graphs: dict[str, tuple[CompiledStateGraph, EpisodeDeps]] = {}
        self._stopping = False
        self._interrupting = False
        self._busy: dict[asyncio.Task[None], BatchItem] = {}
        self._stop_timer: asyncio.TimerHandle | None = None
        self.started = 0
        self.finished = 0

    @property
    def in_flight(self) -> int:
        """Episodes being played right now."""
        return len(self._busy)

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (no new items are taken)."""
        return self._stopping

    def config_for(self, env_name: str) -> EpisodeConfig:
        """The settings episodes of this environment run with."""
        config = self._configs.get(env_name)
        if config is None:
            config = self._config if isinstance(self._config, EpisodeConfig) else self._config(env_name)
            self._configs[env_name] = config
        return config

    def graph_for(self, env_name: str) -> tuple[CompiledStateGraph, EpisodeDeps]:
        """The compiled graph of an environment and its shared clients, built on first use."""
        built = self._graphs.get(env_name)
        if built is None:
            env = get_environment(env_name)
            deps = EpisodeDeps(env)
            built = self._graphs[env_name] = (build_graph(env, deps), deps)
        return built

    async def run(self, items: Iterable[BatchItem] | AsyncIterable[BatchItem]) -> AsyncIterator[dict[str, Any]]:
        """Play every item (until `stop`); yields one record per started episode, as each finishes."""
        take = _taker(items)
        records: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        room = asyncio.Semaphore(2 * self.concurrency)
        workers = [asyncio.create_task(self._work(take, records, room)) for _ in range(self.concurrency)]
        running = len(workers)
        try:
            while running:
                record = await records.get()
                if record is None:
                    running -= 1
                    continue
                room.release()
                yield record
            for worker in workers:  # re-raise a failure of the item source itself
                worker.result()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if self._stop_timer is not None:
                self._stop_timer.cancel()

    def stop(self, grace_s: float = 0.0) -> None:
        """Take no new items; episodes still running after `grace_s` seconds end as `interrupted` records.

        Calling it again with a shorter grace period (a second Ctrl-C) brings the deadline forward.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace_s, 0.0)
        if self._stop_timer is not None:
            if self._stop_timer.when() <= deadline:
                return
            self._stop_timer.cancel()  # a later stop with a shorter grace period wins
        self._stop_timer = loop.call_at(deadline, self._interrupt)

    def _interrupt(self) -> None:
        self._interrupting = True
        for worker in self._busy:
            worker.cancel()

    async def _work(
        self,
        take: Callable[[], Any],
        records: asyncio.Queue[dict[str, Any] | None],
        room: asyncio.Semaphore,
    ) -> None:
        """One worker: take an item, play it, hand over its record; until the source is dry or `stop`."""
        me = asyncio.current_task()
        assert me is not None
        try:
            while not self._stopping:
                await room.acquire()
                if self._stopping:
                    break
                try:
                    item = await take()
                except _SourceDone:
                    break
                self._busy[me] = item
                self.started += 1
                try:
                    record = await self._play(item, me)
                finally:
                    del self._busy[me]
                self.finished += 1
                records.put_nowait(record)
        finally:
            records.put_nowait(None)

    async def _play(self, item: BatchItem, me: asyncio.Task[None]) -> dict[str, Any]:
        """One episode; an interruption by `stop` becomes an aborted record instead of a lost episode."""
        episode_id = new_episode_id(item.task_index, item.repeat_index)
        started = time.time()
        try:
            graph, deps = self.graph_for(item.env)
            config = self.config_for(item.env)
        except Exception as exc:  # an unknown environment name: this item fails, the batch goes on
            return aborted_record(item, episode_id, "invalid_task", type(exc).__name__, str(exc), started)
        try:
            return await run_episode(
                graph,
                item.task,
                config,
                env=item.env,
                task_index=item.task_index,
                repeat_index=item.repeat_index,
                episode_id=episode_id,
            )
        except asyncio.CancelledError:
            if not self._interrupting or me.cancelling() > 1:
                raise
            me.uncancel()
            return aborted_record(
                item, episode_id, INTERRUPTED, "Interrupted", "stopped before the episode ended", started
            )
        finally:
            deps.clients.release(episode_id)

    def replica_stats(self) -> dict[str, dict[str, dict[str, int | bool]]]:
        """Per role, per replica URL: requests, failures, episodes served, in flight, availability."""
        merged: dict[str, dict[str, dict[str, int | bool]]] = {}
        for _, deps in self._graphs.values():
            add_replica_stats(merged, deps.clients.replica_stats())
        return merged

    def latency(self) -> dict[str, LatencyHistogram]:
        """Per role, the latency of every successful model call so far."""
        merged: dict[str, LatencyHistogram] = {}
        for _, deps in self._graphs.values():
            for role, histogram in deps.clients.latency().items():
                merged.setdefault(role, LatencyHistogram()).merge(histogram)
        return merged

    async def aclose(self) -> None:
        """Close the model clients and environment resources the runner's graphs opened."""
        for _, deps in self._graphs.values():
            await deps.aclose()


def aborted_record(
    item: BatchItem, episode_id: str, stop_reason: str, error_type: str, message: str, started: float | None = None
) -> dict[str, Any]:
    """The record of an episode that could not run or finish (a bad seed, a stop, a lost worker)."""
    state = {
        "task": item.task,
        "status": "aborted",
        "stop_reason": stop_reason,
        "wall_s": 0.0 if started is None else time.time() - started,
        "error": {"type": error_type, "message": message},
    }
    return build_record(
        state, env=item.env, episode_id=episode_id, task_index=item.task_index, repeat_index=item.repeat_index
    )


def _taker(items: Iterable[BatchItem] | AsyncIterable[BatchItem]) -> Callable[[], Any]:
    """An awaitable `take()` over a sync or async source, safe for many workers; `_SourceDone` at the end."""
    if isinstance(items, AsyncIterable):
        iterator = aiter(items)
        lock = asyncio.Lock()

        async def take_async() -> BatchItem:
            async with lock:
                try:
                    return await anext(iterator)
                except StopAsyncIteration:
                    raise _SourceDone from None

        return take_async
    sync_iterator = iter(items)

    async def take_sync() -> BatchItem:
        try:
            return next(sync_iterator)
        except StopIteration:
            raise _SourceDone from None

    return take_sync
