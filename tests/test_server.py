"""The rollout service on real uvicorn (in a thread, own loop) over loopback HTTP, against the scripted model server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from service_harness import Served, cli_args, serving

from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.core.ledger import check_invariants
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.testing import FakeModelProcess, FakeModelServer, Hang, ModelRequest, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

HANG = "HANG"
HANG_TASK = {"messages": [{"role": "system", "content": "Play X."}, {"role": "user", "content": f"{HANG}: your move"}]}


class HangOnMarker:
    """Plays X, except in episodes whose opening says HANG: there every policy call hangs."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.player = TicTacToePlayer(X_PREFERENCE)
        self.seconds = seconds

    def __call__(self, request: ModelRequest) -> Any:
        if any(HANG in str(m.get("content")) for m in request.messages):
            return Hang(self.seconds)
        return self.player(request)


async def test_single_rollout_returns_one_checked_record_per_repeat() -> None:
    async with serving() as served, served.client() as client:
        response = await client.post("/v1/rollouts", json={"task": {"id": "t1"}, "repeats": 2})
        assert response.status_code == 200, response.text
        records = response.json()["records"]
        assert [r["repeat_index"] for r in records] == [0, 1]
        for record in records:
            assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
            assert record["task_id"] == "t1" and record["task_index"] is None and record["env"] == "tictactoe"
            assert check_invariants(record["trajectory"]) == []
            assert record["num_policy_calls"] == len(record["trajectory"]["calls"]) > 0
        policy_calls = [r for r in served.models.requests if r["model"] == "policy"]
        assert len(policy_calls) == sum(r["num_policy_calls"] for r in records)


async def test_the_service_writes_the_same_record_as_the_cli() -> None:
    """Same task, two fresh scripted servers: `sparring run --json` and /v1/rollouts agree on every shared field."""
    moves = [{"position": 0, "mark": "X"}, {"position": 4, "mark": "O"}]
    task = {"id": "same", "env_seed": {"initial_moves": moves}, "limits": {"max_turns": 4}}
    with FakeModelProcess() as models:
        run = subprocess.run(
            [
                *(sys.executable, "-m", "sparring.cli", "run", "--quiet", "--json", "--task", json.dumps(task)),
                *("--policy-base-url", models.base_url, "--user-base-url", models.base_url),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    from_cli = json.loads(run.stdout.splitlines()[-1])
    with FakeModelProcess() as models:
        args = cli_args(models.base_url)
        app = create_app(ServerSettings(), lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                response = await client.post("/v1/rollouts", json={"task": task})
    from_service = response.json()["records"][0]
    assert from_cli["status"] == "completed" and from_cli["num_policy_calls"] > 1
    differ = {"id", "timing"}  # a fresh episode id, and wall-clock times
    assert set(from_cli) == set(from_service)
    assert {k: v for k, v in from_cli.items() if k not in differ} == {
        k: v for k, v in from_service.items() if k not in differ
    }


async def test_batch_streams_each_record_as_its_episode_ends_then_a_summary() -> None:
    async with serving({"policy": HangOnMarker(), "user": TicTacToePlayer(O_PREFERENCE)}) as served:
        tasks = [{"id": "a"}, HANG_TASK, {"id": "c"}]
        async with (
            served.client() as client,
            client.stream(
                "POST", "/v1/rollouts/batch", json={"tasks": tasks, "repeats": 1, "concurrency": 3}
            ) as stream,
        ):
            assert stream.status_code == 200 and stream.headers["content-type"] == "application/x-ndjson"
            lines = stream.aiter_lines()
            first = json.loads(await anext(lines))
            second = json.loads(await anext(lines))
            # Both finished while the HANG episode is still waiting on the model: they came before the batch ended.
            assert {first["task_id"], second["task_id"]} == {"a", "c"}
            assert {(r["task_index"], r["repeat_index"]) for r in (first, second)} == {(0, 0), (2, 0)}
            assert served.app.state.service.gate.running == 1


async def test_a_client_that_disconnects_cancels_its_batch() -> None:
    async with serving({"policy": HangOnMarker(), "user": TicTacToePlayer(O_PREFERENCE)}) as served:
        tasks = [{"id": "fast"}] + [HANG_TASK] * 3 + [{"id": f"later-{i}"} for i in range(20)]
        async with served.client() as client:
            async with client.stream("POST", "/v1/rollouts/batch", json={"tasks": tasks, "concurrency": 4}) as stream:
                first = json.loads(await anext(stream.aiter_lines()))
                assert first["task_id"] == "fast"
                for _ in range(100):  # the three HANG episodes and one "later" are playing
                    if served.app.state.service.gate.running == 4:
                        break
                    await asyncio.sleep(0.02)
            # the stream is closed: the service cancels the batch
            await served.until_idle()
            calls = served.model_calls()
            await asyncio.sleep(0.5)
            assert served.model_calls() == calls, "the model server kept getting calls for a gone client"
            assert calls < 2 * 20, "the later tasks never all ran"
            summary = (await client.get("/metrics")).text
            assert "sparring_episodes_in_flight 0.0" in summary


async def test_overload_queues_then_answers_429_with_retry_after() -> None:
    hang = {"policy": HangOnMarker(), "user": TicTacToePlayer(O_PREFERENCE)}
    async with serving(hang, max_concurrent_episodes=1, max_queued_episodes=1) as served, served.client() as client:
        playing = asyncio.create_task(client.post("/v1/rollouts", json={"task": HANG_TASK}))
        queued = asyncio.create_task(client.post("/v1/rollouts", json={"task": {}}))
        gate = served.app.state.service.gate
        for _ in range(200):
            if gate.running == 1 and gate.queued == 1:
                break
            await asyncio.sleep(0.02)
        assert (gate.running, gate.queued) == (1, 1)
        refused = await client.post("/v1/rollouts", json={"task": {}})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "--max-concurrent-episodes 1" in refused.json()["detail"]
        assert "--max-queued-episodes 1" in refused.json()["detail"]
        too_big = await client.post("/v1/rollouts/batch", json={"tasks": [{}], "repeats": 3})
        assert too_big.status_code == 429
        playing.cancel()  # the client goes away: its hanging episode is cancelled, the queued one runs
        await asyncio.gather(playing, return_exceptions=True)
        answered = await queued
        assert answered.status_code == 200 and answered.json()["records"][0]["status"] == "completed"
        await served.until_idle()
        assert (await client.post("/v1/rollouts", json={"task": {}})).status_code == 200


async def test_auth_on_requires_the_key_everywhere_but_healthz(monkeypatch) -> None:
    async with serving(api_key="k-123") as served, served.client() as client:
        assert (await client.get("/healthz")).status_code == 200
        for method, path in (("POST", "/v1/rollouts"), ("GET", "/v1/envs"), ("GET", "/metrics"), ("POST", "/run")):
            response = await client.request(method, path, json={})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = await client.post("/v1/rollouts", json={}, headers={"Authorization": "Bearer k-12"})
        assert wrong.status_code == 401
        right = await client.post("/v1/rollouts", json={}, headers={"Authorization": "Bearer k-123"})
        assert right.status_code == 200 and right.json()["records"][0]["status"] == "completed"


@pytest.mark.parametrize(
    ("path", "body", "status", "loc", "message"),
    [
        ("/v1/rollouts", {"tasks": []}, 422, ["body", "tasks"], "Extra inputs are not permitted"),
        ("/v1/rollouts", {"repeats": "two"}, 422, ["body", "repeats"], "valid integer"),
        ("/v1/rollouts", {"repeats": 65}, 422, ["body", "repeats"], "less than or equal to 64"),
        ("/v1/rollouts", {"env": "chess"}, 422, ["body", "env"], "Input should be"),
        ("/v1/rollouts", {"settings": {"max_turns": 51}}, 422, ["body", "settings", "max_turns"], "equal to 50"),
        ("/v1/rollouts", {"settings": {"policy_max_tokens": 10**6}}, 422, None, "less than or equal to 8192"),
        ("/v1/rollouts", {"settings": {"temperature": 1}}, 422, ["body", "settings", "temperature"], "Extra inputs"),
        (
            "/v1/rollouts",
            {"task": {"limits": {"max_turns": 99}}},
            422,
            ["body", "task", "sparring", "limits", "max_turns"],
            "less than or equal to 50",
        ),
        (
            "/v1/rollouts",
            {"task": {"messages": [{"role": "robot", "content": "hi"}]}},
            422,
            ["body", "task", "sparring", "messages", 0, "role"],
            "Input should be 'system', 'developer', 'user', 'assistant' or 'tool'",
        ),
        ("/v1/rollouts", {"task": {"env": "chess"}}, 422, ["body", "task", "sparring", "env"], "Input should be"),
        ("/v1/rollouts/batch", {"tasks": []}, 422, ["body", "tasks"], "at least 1 item"),
        (
            "/v1/rollouts/batch",
            {"tasks": [{}, {"limitz": {}}]},
            422,
            ["body", "tasks", 1, "sparring", "limitz"],
            "Extra inputs are not permitted",
        ),
        ("/v1/rollouts/batch", {"tasks": [{}] * 10_001}, 422, ["body", "tasks"], "at most 10000 items"),
        ("/run", {"responses_create_params": {}}, 422, ["body", "responses_create_params", "input"], "Field required"),
        ("/run", {"responses_create_params": {"input": "hi", "max_output_tokens": 9000}}, 422, None, "8192"),
    ],
)
async def test_bad_requests_get_a_4xx_naming_the_field_and_the_limit(path, body, status, loc, message) -> None:
    async with served_once() as served, served.client() as client:
        response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    errors = response.json()["detail"]
    assert any(message in error["msg"] for error in errors), errors
    if loc is not None:
        assert any(error["loc"] == loc for error in errors), errors


async def test_a_body_over_the_limit_is_413_and_bad_json_is_422() -> None:
    async with serving(max_body_bytes=1000) as served, served.client() as client:
        response = await client.post("/v1/rollouts", json={"task": {"metadata": {"blob": "x" * 2000}}})
        assert response.status_code == 413
        assert "the limit is 1000 bytes (--max-body-bytes)" in response.json()["detail"]
        broken = await client.post("/v1/rollouts", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"


async def test_envs_graph_health_readiness_and_metrics() -> None:
    async with serving() as served, served.client() as client:
        envs = {e["name"]: e for e in (await client.get("/v1/envs")).json()["envs"]}
        assert "tictactoe" in envs
        assert envs["tictactoe"]["tools"]["policy"][0]["function"]["name"] == "make_move"
        assert envs["tictactoe"]["settings"]["user_tool_choice"] == "required"
        graph = (await client.get("/v1/graph", params={"env": "tictactoe"})).json()
        assert "policy_tools" in graph["mermaid"]
        assert {"source": "policy", "target": "policy_tools", "conditional": True} in graph["edges"]
        assert {n["id"] for n in graph["nodes"]} >= {"seed", "policy", "user", "verify"}
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        await client.post("/v1/rollouts", json={"repeats": 2})
        metrics = (await client.get("/metrics")).text
    for line in (
        'sparring_episodes_total{env="tictactoe",status="completed",stop_reason="env_done"} 2.0',
        'sparring_tokens_total{kind="completion",role="policy"}',
        'sparring_model_call_seconds_count{role="policy"}',
        'sparring_model_call_seconds_count{role="user"}',
        "sparring_episodes_in_flight 0.0",
        "sparring_episode_queue_depth 0.0",
        'sparring_http_requests_total{method="POST",route="/v1/rollouts",status="200"} 1.0',
    ):
        assert line in metrics, line


async def test_readiness_names_the_endpoint_that_does_not_answer() -> None:
    async with FakeModelServer({"policy": TicTacToePlayer(X_PREFERENCE)}) as models:
        dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
        args = make_parser().parse_args(["serve", "--policy-base-url", models.base_url, "--user-base-url", dead])
        app = create_app(ServerSettings(), lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["endpoints"]["policy"]["urls"][models.base_url] == "ok"
    assert body["endpoints"]["user"]["urls"][dead] != "ok"


@asynccontextmanager
async def served_once() -> AsyncIterator[Served]:
    """A default service for tests that only send requests it must refuse."""
    async with serving() as served:
        yield served
