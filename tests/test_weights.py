"""Weight sync (engine/weights.py), routing by load and adaptive concurrency, against the scripted vLLM server.

Generation is stepped with the server's `TokenGate` and every wait is on the server's or the control's
state (`wait_until`, `wait_open`), never on the clock; `asyncio.wait_for` only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sparring import Engine, EpisodeSettings
from sparring.core.errors import UsageError, WeightSyncFailed, WeightUpdateRefused
from sparring.engine.batch import AdaptiveConcurrency, BatchItem, BatchRunner
from sparring.engine.weights import MIN_PAUSE_TIMEOUT_S, WeightOptions, adapter_path_problem, version_problem
from sparring.models.replicas import ReplicaSet, ServerLoad
from sparring.models.transport import parse_server_load
from sparring.testing import FakeModelServer, TicTacToePlayer, TokenGate
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

HANG_UP = 60.0  # only turns a hang into a failure


def players() -> dict[str, Any]:
    return {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}


@pytest.fixture
def adapter(tmp_path: Path) -> Callable[[str], str]:
    """`adapter(name)`: a folder the scripted server takes for a LoRA adapter (it holds adapter_config.json)."""

    def make(name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        return str(folder)

    return make


@asynccontextmanager
async def servers(count: int = 1, **options: Any) -> AsyncIterator[list[FakeModelServer]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeModelServer(players(), **options)) for _ in range(count)]


@asynccontextmanager
async def engine_on(
    policy: list[FakeModelServer], user: FakeModelServer | None = None, **settings: Any
) -> AsyncIterator[Engine]:
    options = settings.pop("weight_options", None)
    config = EpisodeSettings(
        policy_base_urls=[server.base_url for server in policy],
        user_base_urls=[(user or policy[0]).base_url],
        user_tool_choice="required",
        request_timeout_s=HANG_UP,
        **settings,
    )
    engine = Engine(config, weight_options=options)
    try:
        yield engine
    finally:
        await engine.aclose()


def policy_requests(server: FakeModelServer, episode_id: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in server.requests
        if r["model"] != "user" and (episode_id is None or r["headers"].get("X-Session-ID") == episode_id)
    ]


async def first_call_frozen(server: FakeModelServer, gate: TokenGate, tokens: int) -> None:
    """Wait until a policy call is generating and has produced exactly `tokens` tokens (the gate holds the rest)."""
    await server.wait_until(lambda: len(server.engine.running) == 1)
    gate.allow(tokens)
    await server.wait_until(lambda: gate.passed == tokens)


# -- the protocol, one mode at a time -----------------------------------------------------------------


async def test_keep_freezes_the_call_in_flight_and_calls_after_the_update_carry_the_new_version() -> None:
    gate = TokenGate()
    async with servers(token_gate=gate) as [server], engine_on([server]) as engine:
        weights = engine.weights
        first = asyncio.create_task(engine.play({}, episode_id="ep-1"))
        await first_call_frozen(server, gate, 2)
        report = await weights.pause("keep")
        assert report.paused and report.mode == "keep" and server.engine.pause_mode == "keep"
        gate.open()  # from here only the pause holds generation back
        [job] = server.engine.running
        await weights.update("7")
        second = asyncio.create_task(engine.play({}, episode_id="ep-2"))
        await asyncio.wait_for(_until(lambda: weights.control.waiting == 1), HANG_UP)
        assert policy_requests(server, "ep-2") == [], "a new episode's call waits in sparring while paused"
        assert job.generated == 2 and server.engine.weight_version == "7", "frozen, under the new version"
        await weights.resume()
        records = await asyncio.wait_for(asyncio.gather(first, second), HANG_UP)
    assert [r["status"] for r in records] == ["completed", "completed"]
    versions = {ep: [r["weight_version"] for r in policy_requests(server, ep)] for ep in ("ep-1", "ep-2")}
    assert versions["ep-1"][0] == "default" and set(versions["ep-1"][1:]) == {"7"}, versions
    assert set(versions["ep-2"]) == {"7"}, versions
    assert server.engine.prefix_cache_resets == 1, "the update reset the cache once; the pause left it alone"


async def test_wait_lets_the_call_in_flight_finish_before_the_pause_returns() -> None:
    gate = TokenGate()
    async with servers(token_gate=gate) as [server], engine_on([server]) as engine:
        weights = engine.weights
        episode = asyncio.create_task(engine.play({}, episode_id="ep-1"))
        await first_call_frozen(server, gate, 1)
        pausing = asyncio.create_task(weights.pause("wait"))
        await server.wait_until(lambda: server.engine.pause_mode == "wait")
        assert not pausing.done(), "wait returns only once the call in flight has finished"
        gate.open()
        await asyncio.wait_for(pausing, HANG_UP)
        assert not server.engine.running
        await weights.update("8")
        await weights.resume()
        record = await asyncio.wait_for(episode, HANG_UP)
    assert record["status"] == "completed"
    versions = [r["weight_version"] for r in policy_requests(server)]
    assert versions[0] == "default" and set(versions[1:]) == {"8"}, versions


async def test_abort_ends_the_call_in_flight_and_the_episode_still_ends_with_one_typed_record() -> None:
    gate = TokenGate()
    async with servers(token_gate=gate) as [server], engine_on([server]) as engine:
        weights = engine.weights
        episodes = [asyncio.create_task(engine.play({}, episode_id=f"ep-{i}")) for i in range(2)]
        await server.wait_until(lambda: len(server.engine.running) == 2)
        gate.allow(3)
        await server.wait_until(lambda: gate.passed == 3)
        await weights.pause("abort")
        await server.wait_until(lambda: not server.engine.running)
        gate.open()
        sent = len(policy_requests(server))
        await weights.update("9")
        await weights.resume()
        records = await asyncio.wait_for(asyncio.gather(*episodes), HANG_UP)
    assert sorted(r["id"] for r in records) == ["ep-0", "ep-1"]
    assert all(r["status"] in ("completed", "truncated", "aborted") for r in records)
    later = policy_requests(server)[sent:]
    assert later and {r["weight_version"] for r in later} == {"9"}, "every call after the abort runs on 9"


async def test_a_pause_with_no_resume_resumes_on_its_own_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    async with servers() as [server], engine_on([server]) as engine:
        weights = engine.weights
        with caplog.at_level(logging.WARNING, logger="sparring.weights"):
            await weights.pause("keep", timeout_s=MIN_PAUSE_TIMEOUT_S)
            assert server.engine.is_paused and not weights.control.is_open
            await asyncio.wait_for(weights.control.wait_open(), HANG_UP)
        assert not server.engine.is_paused and not weights.paused and weights.auto_resumes == 1
        assert "resuming on its own" in caplog.text
        assert (await engine.play({}))["status"] == "completed"


# -- LoRA ----------------------------------------------------------------------------------------------


async def test_an_adapter_update_loads_it_everywhere_and_policy_calls_go_to_it_by_name(
    adapter: Callable[[str], str],
) -> None:
    paths = [adapter(f"step-{i}") for i in (1, 2, 3)]
    async with servers(2) as [a, b], engine_on([a, b], user=a, routing="rendezvous") as engine:
        weights = engine.weights
        report = await weights.update("1", paths[0])
        assert report.adapter == "policy@1" and report.taken_out == {}
        assert a.loaded_adapters == b.loaded_adapters == {"policy@1": paths[0]}
        records = [await engine.play({}, episode_id=f"ep-{i}") for i in range(4)]
        assert all(r["status"] == "completed" for r in records)
        calls = policy_requests(a) + policy_requests(b)
        assert calls and {r["model"] for r in calls} == {"policy@1"} and {r["adapter"] for r in calls} == {"policy@1"}
        assert {r["adapter"] for r in a.requests if r["model"] == "user"} == {None}, "the user stays on the base"
        assert a.engine.prefix_cache_resets == 0, "an adapter's cache blocks are its own: nothing to reset"
        await weights.update("2", paths[1])
        await weights.update("3", paths[2])
    assert ("unload", "policy@1", paths[0]) in a.adapter_log
    assert set(a.loaded_adapters) == {"policy@2", "policy@3"}, "the newest two stay loaded"


async def test_a_replica_that_fails_the_update_is_taken_out_named_and_comes_back_later(
    adapter: Callable[[str], str],
) -> None:
    async with servers() as [good], servers(lora=False) as [no_lora], engine_on([good, no_lora], user=good) as engine:
        weights = engine.weights
        report = await weights.update("1", adapter("step-1"))
        assert report.replicas[good.base_url] == "ok"
        assert list(report.taken_out) == [no_lora.base_url] and "runtime LoRA" in report.taken_out[no_lora.base_url]
        info = await weights.info()
        assert [(r.url, r.in_rotation) for r in info.replicas] == [(good.base_url, True), (no_lora.base_url, False)]
        records = await asyncio.gather(*(engine.play({}, episode_id=f"ep-{i}") for i in range(4)))
        assert all(r["status"] == "completed" for r in records)
        assert policy_requests(no_lora) == [], "nothing goes to the replica with stale weights"
        assert no_lora.engine.weight_version == "default" and good.engine.weight_version == "1"
        report = await weights.update("2")  # a full-weight update it can take: it is back
        assert report.taken_out == {}
        assert all(r.in_rotation for r in (await weights.info()).replicas)


# -- refused and failed steps change nothing ---------------------------------------------------------------


async def test_an_update_the_caller_must_fix_is_refused_and_changes_nothing(adapter: Callable[[str], str]) -> None:
    async with servers() as [server], engine_on([server], weight_options=WeightOptions(adapter_roots=())) as engine:
        weights = engine.weights
        with pytest.raises(WeightUpdateRefused, match="no adapter folder is allowed") as refused:
            await weights.update("1", adapter("step-1"))
        assert refused.value.status == 403
    async with servers() as [server], engine_on([server]) as engine:
        weights = engine.weights
        await weights.update("5")
        cases = [
            ("4", None, 409, "older than the current '5'"),
            ("5", None, 409, "it was used already"),
            ("step 6", None, 422, "must be 1-64 characters"),
            ("default", None, 422, "vLLM's label"),
            ("6", "relative/path", 422, "must be absolute"),
            ("6", "/ckpt/../etc", 422, "must not contain '..'"),
            ("6", str(Path(adapter("step-6")).parent / "missing"), 422, "no policy server found an adapter"),
        ]
        for version, path, status, words in cases:
            with pytest.raises(WeightUpdateRefused, match=words.replace("(", r"\(")) as refused:
                await weights.update(version, path)
            assert refused.value.status == status, (version, path)
            assert weights.version == "5" and weights.control.is_open and weights.adapter is None
            assert server.engine.weight_version == "5" and server.loaded_adapters == {}
        with pytest.raises(UsageError, match="pause mode"):
            await weights.pause("freeze")  # type: ignore[arg-type]
        await weights.update("step-a")
        with pytest.raises(WeightUpdateRefused, match="used already"):
            await weights.update("step-a")
        await weights.update("6")  # other labels only have to be new; whole numbers still increase from 5


async def test_when_every_replica_fails_the_step_fails_and_nothing_changes() -> None:
    async with servers(dev_mode=False) as [server], engine_on([server]) as engine:
        weights = engine.weights
        with pytest.raises(WeightSyncFailed, match="no dev mode"):
            await weights.pause("keep")
        assert not weights.paused and weights.control.is_open
        with pytest.raises(WeightSyncFailed, match="nothing changed"):
            await weights.update("1")
        assert weights.version is None and weights.control.is_open
        assert (await engine.play({}))["status"] == "completed"


async def test_the_first_update_is_checked_against_the_version_the_servers_already_carry() -> None:
    async with servers(weight_version="12") as [server], engine_on([server]) as engine:
        with pytest.raises(WeightUpdateRefused, match="older than the current '12'"):
            await engine.weights.update("11")
        await engine.weights.update("13")


def test_versions_and_adapter_paths_are_checked_by_their_form() -> None:
    assert version_problem("10", "9", {"8"}) is None
    assert version_problem("9", "10", ()) is not None
    assert version_problem("3", "step-b", {"5"}) is not None, "whole numbers increase past any used before"
    assert version_problem("step-c", "7", {"step-b"}) is None
    assert version_problem("anything", None, ()) is None
    assert version_problem("1", "default", ()) is None
    assert adapter_path_problem("/ckpt/step-8") is None
    assert adapter_path_problem("/ckpt/\x00") == "has control characters"
    assert "at most" in (adapter_path_problem("/" + "a" * 5000) or "")


# -- routing by load ----------------------------------------------------------------------------------


def test_vllm_metrics_are_read_into_a_load() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="policy"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="policy"} 1.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="policy"} 3.0\n'
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 9.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="policy"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="policy"} 0.5\n'
    )
    assert parse_server_load(text, 1.0) == ServerLoad(running=3.0, waiting=3.0, kv_cache_usage=0.5, at=1.0)
    assert parse_server_load("up 1\n", 1.0) is None
    assert parse_server_load(text.replace("0.25", "NaN"), 1.0) is None


def test_least_loaded_weighs_pinned_episodes_and_the_servers_own_queue() -> None:
    now = [100.0]
    replicas = ReplicaSet(("http://a/v1", "http://b/v1"), clock=lambda: now[0], load_max_age_s=5)
    assert replicas.pick_least_loaded("e1") == "http://a/v1"
    assert replicas.pick_least_loaded("e2") == "http://b/v1", "a holds one episode"
    assert replicas.pick_least_loaded("e1") == "http://a/v1", "an episode sticks"
    replicas.report_load("http://b/v1", ServerLoad(running=1, waiting=4, kv_cache_usage=0.9, at=now[0]))
    assert [replicas.pick_least_loaded(f"n{i}") for i in range(3)] == ["http://a/v1"] * 3
    now[0] += 10  # b's metrics are stale now: only what this client knows counts
    replicas.release("n0")
    replicas.release("n1")
    replicas.release("n2")
    replicas.take_out("http://a/v1", "update failed")
    assert replicas.pick_least_loaded("e1") == "http://b/v1", "a replica taken out hands its episodes over"
    assert replicas.stats()["http://a/v1"]["available"] is False
    replicas.put_back("http://a/v1")
    assert replicas.pick_least_loaded("n3") == "http://a/v1"


def test_least_loaded_counts_the_servers_queue_once_and_only_while_it_is_there() -> None:
    now = [100.0]
    a, b = "http://a/v1", "http://b/v1"
    replicas = ReplicaSet((a, b), clock=lambda: now[0], load_max_age_s=5)
    replicas.take_out(b, "for the set-up")
    for key in ("a1", "a2", "a3", "a4"):
        replicas.started(replicas.pick_least_loaded(key))
    replicas.put_back(b)
    for key in ("b1", "b2"):
        replicas.started(replicas.pick_least_loaded(key))
    assert [replicas.pick_least_loaded(k) for k in ("a1", "a2", "a3", "a4", "b1", "b2")] == [a] * 4 + [b] * 2
    # a's metrics count its 4 requests, all this client's: 2 running, 2 queued. They count once, not 4 + 2.
    replicas.report_load(a, ServerLoad(running=2, waiting=2, kv_cache_usage=0.1, at=now[0]))
    replicas.report_load(b, ServerLoad(running=2, waiting=0, kv_cache_usage=0.0, at=now[0]))
    assert (replicas.load(a), replicas.load(b)) == (4.0, 2.0)
    for key in ("a1", "a2", "a3", "a4"):  # a's episodes end before its metrics are read again
        replicas.finished(a, ok=True)
        replicas.release(key)
    assert replicas.load(a) == 0.0, "requests that finished since the reading are not counted"
    assert replicas.pick_least_loaded("new") == a
    # another client's requests on b (the server counts 5, this client has 2 of them) do count
    replicas.report_load(b, ServerLoad(running=2, waiting=3, kv_cache_usage=0.0, at=now[0]))
    assert replicas.load(b) == 2.0 + 3.0


async def test_new_episodes_go_to_the_replica_with_fewer_in_flight_then_stick() -> None:
    """Replica x holds a long episode (its gate stays shut); every episode that starts meanwhile goes to the other."""
    gates = [TokenGate(), TokenGate()]
    async with (
        servers(token_gate=gates[0]) as [first],
        servers(token_gate=gates[1]) as [second],
        servers() as [user],
        engine_on([first, second], user=user) as engine,
    ):
        by_gate = dict(zip((first, second), gates, strict=True))

        def running() -> int:
            return len(first.engine.running) + len(second.engine.running)

        long = asyncio.create_task(engine.play({}, episode_id="long"))
        await asyncio.wait_for(_until(lambda: running() == 1), HANG_UP)
        x, y = (first, second) if first.engine.running else (second, first)
        second_long = asyncio.create_task(engine.play({}, episode_id="other"))
        await asyncio.wait_for(_until(lambda: running() == 2), HANG_UP)
        assert len(y.engine.running) == 1, "the second episode went to the replica without one in flight"
        by_gate[y].open()
        short = [await asyncio.wait_for(engine.play({}, episode_id=f"short-{i}"), HANG_UP) for i in range(3)]
        assert [r["status"] for r in short] == ["completed"] * 3
        by_gate[x].open()
        records = await asyncio.wait_for(asyncio.gather(long, second_long), HANG_UP)
    assert [r["status"] for r in records] == ["completed", "completed"]
    sessions = {s: {r["headers"]["X-Session-ID"] for r in policy_requests(s)} for s in (x, y)}
    assert sessions[x] == {"long"}, "x was busy with the long episode: every new one went to y; it stuck to x"
    assert sessions[y] == {"other", "short-0", "short-1", "short-2"}
    assert len(policy_requests(x)) > 1, "the long episode made several calls, all on x"


async def test_new_episodes_avoid_the_replica_whose_metrics_say_it_is_busy() -> None:
    gate = TokenGate()
    body = {"model": "user", "prompt": "hello", "max_tokens": 4}
    async with (
        servers() as [idle],
        servers(token_gate=gate, max_num_seqs=1) as [busy],
        aiohttp.ClientSession() as http,
    ):
        hogs = [asyncio.create_task(http.post(f"{busy.base_url}/completions", json=body)) for _ in range(3)]
        await busy.wait_until(lambda: len(busy.engine.running) == 1 and len(busy.engine.queued) == 2)
        async with engine_on([idle, busy], user=idle) as engine:
            engine.watch_policy_load(0.01)
            policy, _ = engine.clients.clients(engine.settings_for("tictactoe"))
            replicas = policy.replicas
            assert replicas is not None
            await asyncio.wait_for(_until(lambda: busy.base_url in replicas.server_loads()), HANG_UP)
            for i in range(4):
                assert (await engine.play({}, episode_id=f"ep-{i}"))["status"] == "completed"
        gate.open()
        for response in await asyncio.gather(*hogs):
            response.release()
    assert policy_requests(busy) == [] and len({r["headers"]["X-Session-ID"] for r in policy_requests(idle)}) == 4


# -- adaptive concurrency ----------------------------------------------------------------------------------


def test_the_adaptive_cap_shrinks_under_pressure_and_grows_when_it_binds() -> None:
    adaptive = AdaptiveConcurrency(minimum=2, maximum=16)
    assert adaptive.next_limit(8, 8, waiting=0, kv_cache_usage=0.2) == 10
    assert adaptive.next_limit(8, 3, waiting=0, kv_cache_usage=0.2) == 8, "not binding: no reason to grow"
    assert adaptive.next_limit(8, 8, waiting=2, kv_cache_usage=0.2) == 6
    assert adaptive.next_limit(8, 8, waiting=0, kv_cache_usage=0.95) == 6
    assert adaptive.next_limit(8, 8, waiting=0, kv_cache_usage=0.8) == 8, "between the marks: hold"
    assert adaptive.next_limit(2, 2, waiting=5, kv_cache_usage=1.0) == 2
    assert adaptive.next_limit(16, 16, waiting=0, kv_cache_usage=0.0) == 16
    with pytest.raises(ValueError):
        AdaptiveConcurrency(minimum=4, maximum=2)


async def test_the_runner_cap_follows_the_servers_waiting_queue() -> None:
    gate = TokenGate()
    async with servers(token_gate=gate, max_num_seqs=1) as [server], engine_on([server]) as engine:
        runner = BatchRunner(
            engine, adaptive=AdaptiveConcurrency(minimum=1, maximum=3, interval_s=0.01), close_engine=False
        )
        items = [BatchItem(i, 0, {}, "tictactoe") for i in range(4)]
        records: list[dict[str, Any]] = []

        async def consume() -> None:
            records.extend([record async for record in runner.run(items)])

        running = asyncio.create_task(consume())
        # The first episode's call runs (frozen by the gate) and nothing waits: the cap grows past 1 ...
        await asyncio.wait_for(_until(lambda: runner.limit >= 2), HANG_UP)
        # ... the next episode's call has to queue behind it (max_num_seqs 1): the cap comes back down.
        await server.wait_until(lambda: len(server.engine.queued) >= 1)
        await asyncio.wait_for(_until(lambda: runner.limit == 1), HANG_UP)
        assert 2 <= runner.in_flight <= 3 and runner.started == runner.in_flight
        gate.open()
        await asyncio.wait_for(running, HANG_UP)
    assert sorted(r["task_index"] for r in records) == [0, 1, 2, 3]
    assert runner.limit_changes >= 2


async def _until(predicate: Callable[[], bool]) -> None:
    """Re-check `predicate` as the loop runs (for state outside the scripted server, e.g. a cap)."""
    while not predicate():
        await asyncio.sleep(0.005)


async def test_a_base_model_call_frozen_across_an_adapter_load_keeps_its_starting_label(
    adapter: Callable[[str], str],
) -> None:
    """vLLM relabels the tokens of a request frozen by a keep pause with the new version, but the request
    keeps the weights it started on: the record must say the base weights sampled all of them."""
    gate = TokenGate()
    async with (
        servers(token_gate=gate, weight_version="0") as [server],
        engine_on([server], token_mode="tito", max_turns=1) as engine,
    ):
        episode = asyncio.create_task(engine.play({}))
        gate.allow(5)
        await server.wait_until(lambda: gate.passed == 5)
        await engine.weights.pause("keep")
        await engine.weights.update("1", adapter("step-1"))
        await engine.weights.resume()
        gate.open()
        record = await asyncio.wait_for(episode, HANG_UP)
    first = record["trajectory"]["calls"][0]
    assert first["weight_versions"] == [{"version": "0", "start": 0, "end": first["completion_len"]}]
    assert [r["model"] for r in policy_requests(server) if "render" not in r["path"]] == ["policy"]
