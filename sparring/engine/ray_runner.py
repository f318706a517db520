"""`sparring collect --ray`: the one batch runner on Ray actors, while the driver alone writes.

Each actor (`EpisodeWorker`, one Python process) runs the same `BatchRunner` as a plain `collect`,
with its own concurrency, over the items the driver feeds it, and streams each record back as its
episode ends. `RayRunner` has the batch runner's face (`run(items)` yields records in completion
order; `stop(grace_s)`, `replica_stats()`, `latency()`, `aclose()`), so `collect` writes, resumes,
counts failures and computes metrics exactly as it does in one process. Ray is imported only here,
and `collect` imports this module only with `--ray`.

Flow control, not static shards: the driver keeps at most `concurrency` plus a small buffer of items
outstanding on each actor and tops it up as records come back, so a faster worker gets more work.

A worker that dies (killed, out of memory, a crash) loses only what it held: its in-flight
episodes and its few buffered items go back to the front of the queue and run again elsewhere (or on
the replacement actor the driver starts in its place). An item is given to a worker at most
`max_attempts` times; an item that keeps killing workers ends as an `aborted` record
(`stop_reason: internal_error`, error `WorkerDied`), so every item still ends with a recorded status.
Finished records are never run twice: the driver has already received them.

Model-call latencies and replica counts come from each actor every `STATS_INTERVAL_S` and when it
finishes; a dead actor's last report is kept, so a death can hide at most that interval of calls.

Local runs start a loopback-only Ray instance (no dashboard, no usage report); `--address` joins an
existing cluster, whose workers need sparring installed and must reach the model servers' URLs.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sparring.core.errors import UsageError
from sparring.core.ids import new_episode_id
from sparring.core.record import aborted_record
from sparring.core.settings import EpisodeSettings
from sparring.engine.batch import BatchItem, BatchRunner, Items, drain, taker
from sparring.engine.engine import Engine, EngineStats
from sparring.engine.gc_tuning import tune_gc_for_rollouts
from sparring.models.latency import LatencyHistogram
from sparring.models.pool import ReplicaStats, add_replica_stats

STATS_INTERVAL_S = 2.0
WORKER_START_TIMEOUT_S = 120.0
WORKER_DIED = "WorkerDied"

Key = tuple[int, int]


def connect(address: str | None = None, workers: int = 1) -> bool:
    """Join the cluster at `address`, or start a local loopback-only instance; True when started here.

    A local instance gets at least one CPU per worker, so `--workers` above the core count still runs.

    A Ray already initialised in this process (e.g. by a test with `ray.init(num_cpus=2)`) is used as is.
    Ray is imported here, not at the top: it reads the loopback switch below when it is first imported.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        # Single-node Ray binds the machine's interface address unless told otherwise; keep it on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        num_cpus = max(os.cpu_count() or 1, workers)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


class EpisodeWorker:
    """One actor: a `BatchRunner` over an inbox the driver fills; `records()` streams what it plays."""

    def __init__(self, concurrency: int) -> None:
        self._configs: dict[str, EpisodeSettings | str] = {}
        self._runner = BatchRunner(Engine(self._config_for), concurrency=concurrency)
        self._inbox: asyncio.Queue[BatchItem | None] = asyncio.Queue()
        tune_gc_for_rollouts()  # a worker runs episodes all its life, like the CLI

    def _config_for(self, env_name: str) -> EpisodeSettings:
        config = self._configs[env_name]
        if isinstance(config, str):  # the driver could not resolve it: the item fails with the driver's reason
            raise UsageError(config)
        return config

    def pid(self) -> int:
        """This worker's process id (to watch it, or to kill it in a test)."""
        return os.getpid()

    async def feed(self, items: list[BatchItem], configs: dict[str, EpisodeSettings | str]) -> None:
        """More items to play, with the settings of any environment not sent before."""
        self._configs.update(configs)
        for item in items:
            self._inbox.put_nowait(item)

    async def close_input(self) -> None:
        """No more items will come: `records()` ends once the held ones are played."""
        self._inbox.put_nowait(None)

    async def stop(self, grace_s: float) -> None:
        """Take nothing new; episodes still running after `grace_s` end as interrupted records."""
        self._runner.stop(grace_s)
        self._inbox.put_nowait(None)

    async def records(self) -> AsyncIterator[dict[str, Any]]:
        """Every record of the items fed, as each episode ends (a Ray streaming generator)."""
        async for record in self._runner.run(self._items()):
            yield record

    async def _items(self) -> AsyncIterator[BatchItem]:
        while (item := await self._inbox.get()) is not None:
            yield item

    async def stats(self) -> dict[str, Any]:
        """Replica counts and model-call latencies so far, in JSON-able form."""
        stats = self._runner.stats()
        return {
            "replicas": stats.replicas,
            "latency": {role: histogram.to_dict() for role, histogram in stats.latency.items()},
        }


@dataclass
class _Pending:
    """An item waiting to be played, and how many workers it was already given to."""

    item: BatchItem
    attempts: int = 0


@dataclass
class _Stats:
    """One actor's latest report."""

    replicas: ReplicaStats = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)


class RayRunner:
    """The `Runner` protocol over `workers` Ray actors of `concurrency` episodes each."""

    def __init__(
        self,
        config: EpisodeSettings | Callable[[str], EpisodeSettings],
        *,
        workers: int = 2,
        concurrency: int = 8,
        address: str | None = None,
        max_attempts: int = 3,
        max_worker_restarts: int = 3,
    ) -> None:
        if workers < 1 or concurrency < 1 or max_attempts < 1:
            raise ValueError("workers, concurrency and max_attempts must each be at least 1")
        self.workers = workers
        self.concurrency = concurrency
        self.address = address
        self.max_attempts = max_attempts
        self.max_worker_restarts = max_worker_restarts
        self._config = config
        self._configs: dict[str, EpisodeSettings | str] = {}
        self._window = concurrency + max(2, concurrency // 4)
        self._requeued: deque[_Pending] = deque()
        self._source: Callable[[], Awaitable[BatchItem | None]] | None = None
        self._source_done = False
        self._outstanding: dict[int, dict[Key, _Pending]] = {}
        self._actors: dict[int, Any] = {}
        self._stats: dict[int, _Stats] = {}
        self._retired = _Stats()
        self._stopping = False
        self._grace_s = 0.0
        self._started_ray = False
        self.worker_pids: dict[int, int] = {}
        """Process id of each worker slot's current actor."""
        self.worker_deaths = 0
        self.reruns = 0
        """Items given to another worker because the one holding them died."""
        self.finished = 0

    @property
    def in_flight(self) -> int:
        """Items the workers hold right now (playing or about to)."""
        return sum(len(held) for held in self._outstanding.values())

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (no new items are handed out)."""
        return self._stopping

    async def run(self, items: Items) -> AsyncIterator[dict[str, Any]]:
        """Play every item (until `stop`) on the workers; yields one record per played item, as each ends."""
        self._started_ray = connect(self.address, self.workers) or self._started_ray
        self._source = taker(items)
        records: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        drivers = [asyncio.create_task(self._drive(slot, records)) for slot in range(self.workers)]
        poller = asyncio.create_task(self._poll_stats())
        try:
            async for record in drain(records, len(drivers)):
                self.finished += 1
                yield record
            for driver in drivers:  # re-raise a failure of the driver itself (e.g. no worker could start)
                driver.result()
            for pending in self._leftovers():  # every worker gave up: these items still get a record
                self.finished += 1
                yield _worker_died(pending.item, "no Ray worker was left to run it")
        finally:
            poller.cancel()
            for driver in drivers:
                driver.cancel()
            await asyncio.gather(poller, *drivers, return_exceptions=True)
            self._kill_workers()

    def stop(self, grace_s: float = 0.0) -> None:
        """Hand out nothing new; every worker's running episodes get `grace_s`, then end as interrupted records."""
        self._stopping = True
        self._grace_s = grace_s
        for actor in self._actors.values():
            actor.stop.remote(grace_s)

    def stats(self) -> EngineStats:
        """Per role, the latency of every model call the workers reported; per replica, counts summed."""
        replicas: ReplicaStats = {}
        latency: dict[str, LatencyHistogram] = {}
        for stats in (self._retired, *self._stats.values()):
            add_replica_stats(replicas, stats.replicas)
            for role, data in stats.latency.items():
                latency.setdefault(role, LatencyHistogram()).merge(LatencyHistogram.from_dict(data))
        return EngineStats(latency=latency, replicas=replicas)

    async def aclose(self) -> None:
        """Kill any worker still alive, and shut down the local Ray instance if this runner started it."""
        self._kill_workers()
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    # -- one worker slot -------------------------------------------------------------------------

    def _kill_workers(self) -> None:
        import ray

        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()

    async def _drive(self, slot: int, records: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Keep one worker busy until the items run out; start a replacement when it dies."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            for incarnation in range(self.max_worker_restarts + 1):
                if incarnation and (self._stopping or not await self._has_work()):
                    break
                actor = await self._start_worker(slot)
                try:
                    await self._serve(slot, actor, records)
                    self._retire_stats(slot, await actor.stats.remote())
                    break
                except (RayActorError, RayTaskError) as exc:
                    self.worker_deaths += 1
                    self._retire_stats(slot, None)
                    await self._take_back(slot, records, f"{type(exc).__name__}: {exc}".splitlines()[0])
                finally:
                    self._actors.pop(slot, None)
                    ray.kill(actor)
        finally:
            records.put_nowait(None)

    async def _start_worker(self, slot: int) -> Any:
        import ray

        # ray: remote()'s keyword overload omits the actor option max_concurrency (ray accepts it at runtime).
        remote = ray.remote(num_cpus=1, max_restarts=0, max_concurrency=1000)  # pyright: ignore[reportCallIssue]
        actor = remote(EpisodeWorker).remote(self.concurrency)
        try:
            self.worker_pids[slot] = await asyncio.wait_for(actor.pid.remote(), WORKER_START_TIMEOUT_S)
        except TimeoutError:
            ray.kill(actor)
            raise RuntimeError(
                f"Ray worker {slot} did not start within {WORKER_START_TIMEOUT_S:.0f} s: each worker needs 1 CPU and "
                f"the cluster has {ray.available_resources().get('CPU', 0):g} free; use fewer --workers"
            ) from None
        self._actors[slot] = actor
        self._outstanding[slot] = {}
        if self._stopping:
            actor.stop.remote(self._grace_s)
        return actor

    async def _serve(self, slot: int, actor: Any, records: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Feed the worker and pass its records on, until it has played everything it will get."""
        held = self._outstanding[slot]
        sent_configs: set[str] = set()
        stream = actor.records.options(num_returns="streaming").remote()
        input_open = await self._top_up(actor, held, sent_configs)
        async for ref in stream:
            record = await ref
            held.pop((record["task_index"], record["repeat_index"]), None)
            await records.put(record)
            if input_open:
                input_open = await self._top_up(actor, held, sent_configs)

    async def _top_up(self, actor: Any, held: dict[Key, _Pending], sent_configs: set[str]) -> bool:
        """Give the worker items up to its window; False once its input is closed (nothing left, or stopping)."""
        batch: list[_Pending] = []
        while not self._stopping and len(held) + len(batch) < self._window:
            pending = await self._next()
            if pending is None:
                break
            batch.append(pending)
        if batch:
            configs = {}
            for pending in batch:
                env = pending.item.env
                if env not in sent_configs:
                    configs[env] = self._config_for(env)
                    sent_configs.add(env)
                pending.attempts += 1
                held[(pending.item.task_index, pending.item.repeat_index)] = pending
            await actor.feed.remote([p.item for p in batch], configs)
        if self._stopping:
            return False
        if not batch and not held:
            await actor.close_input.remote()
            return False
        return True

    async def _take_back(self, slot: int, records: asyncio.Queue[dict[str, Any] | None], reason: str) -> None:
        """A worker died: its items run again elsewhere, unless tried too often or the run is stopping."""
        held = self._outstanding.pop(slot, {})
        for pending in held.values():
            if self._stopping or pending.attempts >= self.max_attempts:
                why = "the run was stopping" if self._stopping else f"{pending.attempts} workers died playing it"
                await records.put(_worker_died(pending.item, f"{reason} ({why})"))
            else:
                self.reruns += 1
                self._requeued.appendleft(pending)

    def _retire_stats(self, slot: int, final: dict[str, Any] | None) -> None:
        """Keep a finished or dead actor's last report in the totals."""
        stats = _Stats(**final) if final else self._stats.get(slot, _Stats())
        self._stats.pop(slot, None)
        for per_url in stats.replicas.values():
            for counts in per_url.values():
                counts["in_flight"] = 0
        add_replica_stats(self._retired.replicas, stats.replicas)
        for role, data in stats.latency.items():
            merged = LatencyHistogram.from_dict(self._retired.latency[role]) if role in self._retired.latency else None
            histogram = LatencyHistogram.from_dict(data)
            if merged is not None:
                histogram.merge(merged)
            self._retired.latency[role] = histogram.to_dict()

    async def _poll_stats(self) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            for slot, actor in list(self._actors.items()):
                try:
                    report = await actor.stats.remote()
                except (RayActorError, RayTaskError):
                    continue  # its driver notices the death and re-runs its items
                if slot in self._actors:
                    self._stats[slot] = _Stats(**report)

    # -- the shared queue of items ----------------------------------------------------------------

    async def _next(self) -> _Pending | None:
        """The next item: one taken back from a dead worker first, else the next from the source."""
        if self._requeued:
            return self._requeued.popleft()
        if self._source_done or self._source is None:
            return None
        item = await self._source()
        if item is None:
            self._source_done = True
            return None
        return _Pending(item)

    async def _has_work(self) -> bool:
        """Whether a replacement worker would get anything."""
        if self._requeued:
            return True
        pending = await self._next()
        if pending is not None:
            self._requeued.appendleft(pending)
        return pending is not None

    def _leftovers(self) -> list[_Pending]:
        leftovers = list(self._requeued)
        self._requeued.clear()
        return leftovers

    def _config_for(self, env_name: str) -> EpisodeSettings | str:
        """The environment's settings, resolved once in the driver; a failure travels as its message."""
        if env_name not in self._configs:
            try:
                self._configs[env_name] = (
                    self._config if isinstance(self._config, EpisodeSettings) else self._config(env_name)
                )
            except Exception as exc:
                self._configs[env_name] = str(exc)
        return self._configs[env_name]


def _worker_died(item: BatchItem, message: str) -> dict[str, Any]:
    """The record of an item no worker could finish."""
    return aborted_record(
        item.task,
        env=item.env,
        episode_id=new_episode_id(item.task_index, item.repeat_index),
        stop_reason="internal_error",
        error=(WORKER_DIED, message),
        task_index=item.task_index,
        repeat_index=item.repeat_index,
    )
