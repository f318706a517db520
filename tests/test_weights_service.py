"""`/v1/weights` on the rollout service and the typed client (`sparring.client`, sync and async) over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.client import AsyncSparringClient, SparringClient
from sparring.core.errors import (
    ServiceAuthError,
    ServiceRequestError,
    UsageError,
    WeightSyncFailed,
    WeightUpdateRefused,
)
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.testing import FakeModelProcess, FakeModelServer, TicTacToePlayer, TokenGate
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

HANG_UP = 60.0


def make_app(model_url: str, **settings: Any) -> Any:
    args = make_parser().parse_args(
        ["serve", "--policy-base-url", model_url, "--user-base-url", model_url, "--user-tool-choice", "required"]
    )
    return create_app(ServerSettings(**settings), lambda env: settings_from_args(args, env))


@contextmanager
def service(tmp_path: Path, **options: Any) -> Iterator[tuple[str, Path]]:
    """The service over a scripted model server in a child process; adapters may live under tmp_path/adapters."""
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    with (
        FakeModelProcess(**options) as models,
        BackgroundServer(make_app(models.base_url, adapter_dirs=(str(adapters),), api_key="secret")) as server,
    ):
        yield server.base_url, adapters


def test_the_sync_client_drives_the_weight_sync_and_plays_rollouts(tmp_path: Path) -> None:
    with service(tmp_path) as (url, adapters), SparringClient(url, api_key="secret") as client:
        state = client.weights()
        assert state.version is None and not state.paused and [r.version for r in state.replicas] == ["default"]
        step = client.pause("keep", timeout_s=600)
        assert step.paused and step.mode == "keep" and list(step.replicas.values()) == ["ok"]
        (adapters / "step-3").mkdir()
        (adapters / "step-3" / "adapter_config.json").write_text("{}")
        step = client.update_weights("3", adapter=str(adapters / "step-3"))
        assert (step.version, step.adapter, step.taken_out) == ("3", "policy@3", {})
        for version, adapter, status in [
            ("2", None, 409),
            ("4", "/etc", 403),
            ("4", str(adapters / "missing"), 422),
        ]:
            with pytest.raises(WeightUpdateRefused) as refused:
                client.update_weights(version, adapter=adapter)
            assert refused.value.status == status and isinstance(refused.value, ServiceRequestError)
        assert client.weights().version == "3"
        assert not client.resume().paused
        records = client.rollouts({}, repeats=2)
        assert [r["status"] for r in records] == ["completed", "completed"]
        stream = client.batch([{}, {}], repeats=2, concurrency=2)
        assert len({r["id"] for r in stream}) == 4
        assert stream.summary is not None and stream.summary.episodes == 4
        assert client.metrics().value("sparring_episodes_total") == 6
        with SparringClient(url) as stranger, pytest.raises(ServiceAuthError):
            stranger.weights()


def test_every_weights_body_is_checked_before_anything_moves(tmp_path: Path) -> None:
    with service(tmp_path) as (url, _), httpx.Client(base_url=url, headers={"Authorization": "Bearer secret"}) as http:
        bad = [
            ("/v1/weights/pause", '{"mode": "freeze"}'),
            ("/v1/weights/pause", '{"mode": "keep", "timeout_s": 0}'),
            ("/v1/weights/pause", '{"mode": "keep", "and": 1}'),
            ("/v1/weights/update", '{"version": "a b"}'),
            ("/v1/weights/update", '{"version": 7}'),
            ("/v1/weights/update", '{"version": "' + "9" * 65 + '"}'),
            ("/v1/weights/update", '{"version": "8", "adapter": "/' + "a" * 5000 + '"}'),
            ("/v1/weights/update", '{"version": "8", "adapter": ""}'),
        ]
        for path, body in bad:
            answer = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 422, (path, body, answer.text)
        state = http.get("/v1/weights").json()
        assert not state["paused"] and state["version"] is None and state["replicas"][0]["version"] == "default"


def test_a_service_without_adapter_folders_refuses_adapters_and_a_server_without_dev_mode_is_a_502(
    tmp_path: Path,
) -> None:
    with (
        FakeModelProcess(dev_mode=False) as models,
        BackgroundServer(make_app(models.base_url)) as server,
        SparringClient(server.base_url) as client,
    ):
        with pytest.raises(WeightUpdateRefused, match="--adapter-dir") as refused:
            client.update_weights("1", adapter=str(tmp_path))
        assert refused.value.status == 403
        with pytest.raises(WeightSyncFailed, match="no dev mode"):
            client.pause("wait")
        assert not client.weights().paused
    with pytest.raises(UsageError, match="adapter folder"):
        make_app("http://127.0.0.1:9/v1", adapter_dirs=("relative",))


async def test_episodes_running_across_pause_update_resume_each_end_once_with_the_new_version() -> None:
    gate = TokenGate()
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(players, token_gate=gate) as models:
        with BackgroundServer(make_app(models.base_url)) as server:
            async with AsyncSparringClient(server.base_url) as client:
                stream = client.batch([{}] * 3, repeats=2, concurrency=3)
                reading = asyncio.create_task(_all(stream))
                await models.wait_until(lambda: len(models.engine.running) == 3)
                gate.allow(2)
                await models.wait_until(lambda: gate.passed == 2)
                await client.pause("keep")
                gate.open()
                await client.update_weights("1")
                await client.resume()
                records = await asyncio.wait_for(reading, HANG_UP)
                assert (await client.weights()).version == "1"
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert all(r["status"] == "completed" for r in records)
    assert stream.summary is not None and stream.summary.counts == {"completed": 6}
    late = [r for r in models.requests if r["model"] == "policy"][3:]
    assert late and {r["weight_version"] for r in late} == {"1"}, "every call after the first three runs on 1"


async def _all(stream: Any) -> list[dict[str, Any]]:
    return [record async for record in stream]
