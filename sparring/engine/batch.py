"""The one batch runner: many episodes at bounded concurrency, records in completion order.

Every bulk face runs episodes through a `Runner`: `collect`, the HTTP batch endpoint, and each Ray
worker (on its share) use `BatchRunner`; `collect --ray` uses `RayRunner` (engine/ray_runner.py),
which implements the same protocol over Ray actors.

    runner = BatchRunner(engine, concurrency=8)     # engine: the Engine that plays the episodes
    async for record in runner.run(items):         # items: (async) iterable of BatchItem
        ...                                          # records as episodes finish
    runner.stop(grace_s=10)                          # e.g. on SIGINT/SIGTERM: no new items; in-flight
                                                     # ones get grace_s, then end as aborted records
    runner.stats()                                   # model-call latency per role, counts per replica
    await runner.aclose()                            # closes the engine's clients and resources

`run` keeps a fixed pool of `concurrency` workers pulling from the item source (100k items never
means 100k tasks), and holds at most 2 x concurrency finished-but-unread records (a slow reader
slows the workers down).

Adaptive concurrency (`adaptive=AdaptiveConcurrency(minimum, maximum)`): the cap on episodes in flight
follows the policy servers instead of a guess. It starts at `minimum`; every `interval_s`, given fresh
metrics from the servers (vLLM's /metrics, read in the background by the policy client's transport),
it shrinks by a quarter (at least 1) while any server has requests waiting or its KV cache is
fuller than `kv_high`, and grows by a quarter (at least 1) while the cap is what holds episodes back and the KV
cache is below `kv_low`; between `minimum` and `maximum` always. While the weight sync has generation
paused it holds still (vLLM's gauges go stale during a pause).

Every item a worker took yields exactly one record: after `stop`, an episode still running when the
grace period ends is cancelled and yields `status: aborted, stop_reason: interrupted`. If the reader
stops iterating (an HTTP client went away: closing or cancelling the generator), the workers and their
in-flight episodes are cancelled at once and nothing keeps running for nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sparring.core.ids import new_episode_id
from sparring.core.record import aborted_record
from sparring.core.waiters import Waiters
from sparring.engine.engine import Engine, EngineStats

INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class AdaptiveConcurrency:
    """Bounds and thresholds of the adaptive cap on episodes in flight (see the module docstring)."""

    minimum: int
    maximum: int
    interval_s: float = 1.0
    kv_high: float = 0.9
    kv_low: float = 0.75

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.maximum < self.minimum:
            raise ValueError(
                f"adaptive concurrency needs 1 <= minimum <= maximum, got {self.minimum} and {self.maximum}"
            )
        if not (0 < self.kv_low <= self.kv_high <= 1) or not self.interval_s > 0:
            raise ValueError("adaptive concurrency needs 0 < kv_low <= kv_high <= 1 and interval_s > 0")

    def next_limit(self, limit: int, in_flight: int, waiting: float, kv_cache_usage: float) -> int:
        """The cap after one reading of the servers' metrics."""
        step = max(1, limit // 4)
        if waiting > 0 or kv_cache_usage >= self.kv_high:
            return max(self.minimum, limit - step)
        if kv_cache_usage < self.kv_low and in_flight >= limit:
            return min(self.maximum, limit + step)
        return limit


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One episode to play: which task (and which repeat of it), and on which environment."""

    task_index: int
    repeat_index: int
    task: dict[str, Any]
    env: str


Items = Iterable[BatchItem] | AsyncIterable[BatchItem]


class Runner(Protocol):
    """What `collect` and the service need of a runner: the batch runner in one process, or Ray's."""

    def run(self, items: Items) -> AsyncIterator[dict[str, Any]]:
        """Play every item (until `stop`); one record per started item, as each episode ends."""
        ...

    def stop(self, grace_s: float = 0.0) -> None:
        """Take no new items; episodes still running after `grace_s` end as `interrupted` records."""
        ...

    def stats(self) -> EngineStats:
        """Model-call latency per role and counts per replica, so far."""
        ...

    async def aclose(self) -> None:
        """Release what the runner holds (model clients, environment resources, processes)."""
        ...


class BatchRunner:
    """Runs items on a fixed pool of workers over one Engine; see the module docstring for the contract."""

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int = 8,
        overrides: Mapping[str, Any] | None = None,
        close_engine: bool = True,
        adaptive: AdaptiveConcurrency | None = None,
    ) -> None:
        """`overrides`: settings of these episodes that differ from the engine's (a request's own);
        `close_engine`: whether `aclose` closes the engine too (not when the engine is shared);
        `adaptive`: let the cap follow the servers' load (then `concurrency` is its maximum)."""
        if adaptive is not None:
            concurrency = adaptive.maximum
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.engine = engine
        self.overrides = overrides
        self.concurrency = concurrency
        self.adaptive = adaptive
        self._cap = _Cap(adaptive.minimum) if adaptive is not None else None
        self.limit_changes = 0
        self._close_engine = close_engine
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
    def limit(self) -> int:
        """Episodes allowed in flight now (`concurrency`, unless adaptive)."""
        return self._cap.limit if self._cap is not None else self.concurrency

    @property
    def stopping(self) -> bool:
        """Whether `stop` was called (no new items are taken)."""
        return self._stopping

    async def run(self, items: Items) -> AsyncIterator[dict[str, Any]]:
        """Play every item (until `stop`); yields one record per started episode, as each finishes."""
        take = taker(items)
        records: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        room = asyncio.Semaphore(2 * self.concurrency)
        workers = [asyncio.create_task(self._work(take, records, room)) for _ in range(self.concurrency)]
        governor = asyncio.create_task(self._govern()) if self.adaptive is not None else None
        try:
            async for record in drain(records, len(workers)):
                room.release()
                yield record
            for worker in workers:  # re-raise a failure of the item source itself
                worker.result()
        finally:
            for worker in [*workers, *([governor] if governor else [])]:
                worker.cancel()
            await asyncio.gather(*workers, *([governor] if governor else []), return_exceptions=True)
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
        take: Callable[[], Awaitable[BatchItem | None]],
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
                if self._cap is not None:
                    await self._cap.acquire()
                try:
                    item = await take()
                    if item is None:
                        break
                    self._busy[me] = item
                    self.started += 1
                    try:
                        record = await self._play(item, me)
                    finally:
                        del self._busy[me]
                finally:
                    if self._cap is not None:
                        self._cap.release()
                self.finished += 1
                records.put_nowait(record)
        finally:
            records.put_nowait(None)

    async def _play(self, item: BatchItem, me: asyncio.Task[None]) -> dict[str, Any]:
        """One episode; an interruption by `stop` becomes an aborted record instead of a lost episode."""
        episode_id = new_episode_id(item.task_index, item.repeat_index)
        started = time.time()
        try:
            return await self.engine.play(
                item.task,
                env=item.env,
                settings=self.overrides,
                task_index=item.task_index,
                repeat_index=item.repeat_index,
                episode_id=episode_id,
            )
        except asyncio.CancelledError:
            if not self._interrupting or me.cancelling() > 1:
                raise
            me.uncancel()
            return aborted_record(
                item.task,
                env=item.env,
                episode_id=episode_id,
                stop_reason=INTERRUPTED,
                error=("Interrupted", "stopped before the episode ended"),
                task_index=item.task_index,
                repeat_index=item.repeat_index,
                started=started,
            )

    async def _govern(self) -> None:
        """Move `limit` with the policy servers' load (see the module docstring)."""
        adaptive, cap = self.adaptive, self._cap
        assert adaptive is not None and cap is not None
        self.engine.watch_policy_load(adaptive.interval_s)
        last_reading = 0.0
        while True:
            await asyncio.sleep(adaptive.interval_s)
            load = self.engine.policy_load()
            if load is None or load.at <= last_reading or not self.engine.weights.control.is_open:
                continue
            last_reading = load.at
            limit = adaptive.next_limit(cap.limit, cap.held, load.waiting, load.kv_cache_usage)
            if limit != cap.limit:
                cap.set_limit(limit)
                self.limit_changes += 1

    def stats(self) -> EngineStats:
        """Per role, the latency of every answered model call; per role and replica, its counts."""
        return self.engine.stats()

    async def aclose(self) -> None:
        """Close the engine's model clients and environment resources (unless the engine is shared)."""
        if self._close_engine:
            await self.engine.aclose()


class _Cap:
    """A semaphore whose size can change: `acquire` waits while `held` is at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters = Waiters()

    async def acquire(self) -> None:
        await self._waiters.until(lambda: self.held < self.limit)
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._waiters.wake_all()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._waiters.wake_all()


async def drain(records: asyncio.Queue[dict[str, Any] | None], producers: int) -> AsyncIterator[dict[str, Any]]:
    """The records `producers` put on the queue, until each has put its `None` (it is done)."""
    while producers:
        record = await records.get()
        if record is None:
            producers -= 1
        else:
            yield record


def taker(items: Items) -> Callable[[], Awaitable[BatchItem | None]]:
    """An awaitable `take()` over a sync or async source, safe for many workers; None at the end."""
    if isinstance(items, AsyncIterable):
        iterator = aiter(items)
        lock = asyncio.Lock()

        async def take_async() -> BatchItem | None:
            async with lock:
                return await anext(iterator, None)

        return take_async
    sync_iterator = iter(items)

    async def take_sync() -> BatchItem | None:
        return next(sync_iterator, None)

    return take_sync
