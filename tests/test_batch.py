"""The one batch runner: bounded workers, one record per started item, stop and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from sparring.core.settings import EpisodeSettings
from sparring.engine.batch import BatchItem, BatchRunner
from sparring.engine.engine import Engine
from sparring.testing import FakeModelServer, Hang
from sparring.testing.responders import tictactoe_players


def config_for(server: FakeModelServer, **settings: object) -> EpisodeSettings:
    return EpisodeSettings(
        policy_base_urls=[server.base_url],
        user_base_urls=[server.base_url],
        user_tool_choice="required",
        request_timeout_s=30.0,
        **settings,
    )


def items(n_tasks: int, repeats: int = 1) -> list[BatchItem]:
    return [BatchItem(t, r, {}, "tictactoe") for t in range(n_tasks) for r in range(repeats)]


async def test_every_item_yields_one_record_and_items_are_pulled_only_as_workers_free_up() -> None:
    taken = 0

    def source() -> Iterator[BatchItem]:
        nonlocal taken
        for item in items(6, repeats=2):
            taken += 1
            yield item

    async with FakeModelServer(tictactoe_players(), record=False) as server:
        runner = BatchRunner(Engine(config_for(server)), concurrency=3)
        records = []
        most_ahead = 0
        try:
            async for record in runner.run(source()):
                most_ahead = max(most_ahead, taken - len(records))
                records.append(record)
        finally:
            await runner.aclose()
    assert sorted((r["task_index"], r["repeat_index"]) for r in records) == [(t, r) for t in range(6) for r in (0, 1)]
    assert all(r["status"] == "completed" for r in records)
    assert all(r["id"].startswith(f"t{r['task_index']}-r{r['repeat_index']}-") for r in records)
    assert len({r["id"] for r in records}) == 12
    assert most_ahead <= 2 * 3, "items taken beyond the workers plus the bounded buffer of unread records"
    assert runner.started == runner.finished == 12 and runner.in_flight == 0
    assert runner.stats().replicas["policy"][server.base_url]["episodes"] == 12
    assert runner.stats().latency["user"].count > 0


async def test_async_item_source_and_unknown_env_is_one_aborted_record() -> None:
    async def source() -> AsyncIterator[BatchItem]:
        yield BatchItem(0, 0, {}, "tictactoe")
        yield BatchItem(1, 0, {}, "no-such-env")
        yield BatchItem(2, 0, {}, "tictactoe")

    async with FakeModelServer(tictactoe_players(), record=False) as server:
        runner = BatchRunner(Engine(config_for(server)), concurrency=2)
        try:
            records = {r["task_index"]: r async for r in runner.run(source())}
        finally:
            await runner.aclose()
    assert records[0]["status"] == records[2]["status"] == "completed"
    assert (records[1]["status"], records[1]["stop_reason"]) == ("aborted", "invalid_task")
    assert "no-such-env" in records[1]["error"]["message"]


async def test_stop_takes_no_new_items_and_interrupts_in_flight_episodes_after_the_grace_period() -> None:
    async with FakeModelServer({"policy": Hang(60), "user": Hang(60)}, record=False) as server:
        runner = BatchRunner(Engine(config_for(server)), concurrency=2)
        records = []
        try:
            async for record in _stop_soon(runner, runner.run(iter(items(10))), grace_s=0.2):
                records.append(record)
        finally:
            await runner.aclose()
    assert len(records) == 2, "only the two started episodes end, each with a record"
    assert {(r["status"], r["stop_reason"]) for r in records} == {("aborted", "interrupted")}
    assert all(r["error"]["type"] == "Interrupted" for r in records)


async def test_a_reader_that_goes_away_cancels_every_in_flight_episode() -> None:
    async with FakeModelServer({"policy": Hang(60), "user": Hang(60)}, record=False) as server:
        runner = BatchRunner(Engine(config_for(server)), concurrency=4)
        tasks_before = asyncio.all_tasks()
        stream = runner.run(iter(items(10)))
        reader = asyncio.create_task(anext(stream))
        while runner.in_flight < 4:
            await asyncio.sleep(0.01)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()
        await runner.aclose()
        assert runner.in_flight == 0
        leftover = [t for t in asyncio.all_tasks() - tasks_before if not t.done()]
        assert [t for t in leftover if "_work" in repr(t.get_coro())] == []


async def _stop_soon(runner: BatchRunner, stream: AsyncIterator[dict], grace_s: float) -> AsyncIterator[dict]:
    """Call `stop` once both workers are busy, then pass the records through."""

    async def stopper() -> None:
        while runner.in_flight < 2:
            await asyncio.sleep(0.01)
        runner.stop(grace_s)

    task = asyncio.create_task(stopper())
    async for record in stream:
        yield record
    await task
