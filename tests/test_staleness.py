"""`max_staleness`: an episode whose oldest policy token lags the current weight version by more ends
aborted/stale (engine, collect, the service's settings, Studio's form), collect may drop it instead,
and export leaves such rows out and counts them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_export import synthetic, write_records

from sparring import CollectSpec, Engine, EpisodeSettings, collect, export
from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.core.errors import InputError, UsageError
from sparring.core.settings import SettingsError
from sparring.engine import collect as collect_module
from sparring.models.generation import GenerationControl
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.studio import settings_schema
from sparring.testing import FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE, ModelRequest, Step


class NewWeightsEveryUserTurn:
    """The simulated user plays O; each of its calls first moves the weights one version on (server and
    sparring's control alike), as a trainer's update landing between two policy calls would."""

    def __init__(self, server: Callable[[], FakeModelServer], control: Callable[[], GenerationControl]) -> None:
        self.player = TicTacToePlayer(O_PREFERENCE)
        self.server, self.control = server, control
        self.version = 0

    def __call__(self, request: ModelRequest) -> Step:
        if request.tool_choice != "none":  # its move; the words after it (tool choice none) change nothing
            self.version += 1
            self.server().engine.update_weight_version(str(self.version))
            self.control().version = str(self.version)
        return self.player(request)


def settings_for(server: FakeModelServer, **more: Any) -> EpisodeSettings:
    return EpisodeSettings(
        policy_base_urls=[server.base_url],
        user_base_urls=[server.base_url],
        token_mode="tito",
        user_tool_choice="required",
        request_timeout_s=30.0,
        **more,
    )


async def test_an_episode_past_max_staleness_ends_aborted_stale_before_its_next_policy_call() -> None:
    engines: list[Engine] = []
    servers: list[FakeModelServer] = []
    user = NewWeightsEveryUserTurn(lambda: servers[0], lambda: engines[0].weights.control)
    async with FakeModelServer({"policy": TicTacToePlayer(X_PREFERENCE), "user": user}, weight_version="0") as server:
        servers.append(server)
        engine = Engine(settings_for(server, max_staleness=1))
        engines.append(engine)
        engine.weights.control.version = "0"
        try:
            record = await engine.play({})
        finally:
            await engine.aclose()
    assert (record["status"], record["stop_reason"]) == ("aborted", "stale")
    assert record["error"]["type"] == "StaleEpisode" and "max_staleness 1" in record["error"]["message"]
    assert record["num_policy_calls"] == 2, "the third call is never made: its tokens would be wasted"
    assert record["weight_versions"] == {"set": ["0", "1"], "min": "0", "max": "1", "current": "2", "staleness": 2}
    assert len([r for r in server.requests if r["model"] == "policy" and "render" not in r["path"]]) == 2


async def test_without_a_bound_the_same_episode_plays_on() -> None:
    engines: list[Engine] = []
    servers: list[FakeModelServer] = []
    user = NewWeightsEveryUserTurn(lambda: servers[0], lambda: engines[0].weights.control)
    async with FakeModelServer({"policy": TicTacToePlayer(X_PREFERENCE), "user": user}, weight_version="0") as server:
        servers.append(server)
        engine = Engine(settings_for(server))
        engines.append(engine)
        engine.weights.control.version = "0"
        try:
            record = await engine.play({})
        finally:
            await engine.aclose()
    assert record["status"] == "completed" and record["weight_versions"]["staleness"] == 3


@pytest.mark.parametrize("drop", [False, True])
async def test_collect_writes_stale_episodes_as_aborted_stale_or_drops_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: bool
) -> None:
    engines: list[Engine] = []
    servers: list[FakeModelServer] = []

    class Recorded(Engine):  # collect makes its engine itself: keep a handle on it for the user's updates
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.weights.control.version = "0"
            engines.append(self)

    monkeypatch.setattr(collect_module, "Engine", Recorded)
    user = NewWeightsEveryUserTurn(lambda: servers[0], lambda: engines[0].weights.control)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("{}\n{}\n")
    out = tmp_path / "out.jsonl"
    async with FakeModelServer({"policy": TicTacToePlayer(X_PREFERENCE), "user": user}, weight_version="0") as server:
        servers.append(server)
        spec = CollectSpec(
            input=tasks,
            output=out,
            settings=settings_for(server, max_staleness=0),
            concurrency=1,
            drop_stale=drop,
        )
        result = await collect(spec)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    staleness = result.metrics["staleness"]
    assert result.exit_code == 0 and result.failed == 0, "a bound that does its job is no failure"
    if drop:
        assert records == [] and staleness["dropped"] == 2 and result.metrics["episodes"] == 0
    else:
        assert [(r["status"], r["stop_reason"]) for r in records] == [("aborted", "stale")] * 2
        assert staleness["ended_stale"] == 2 and staleness["dropped"] == 0
    assert not spec_failures(out), "stale episodes are not written to the failures file"


def spec_failures(out: Path) -> list[bytes]:
    failures = out.with_name(out.name + ".failures.jsonl")
    return failures.read_bytes().splitlines() if failures.exists() else []


def versioned(task_index: int, repeat: int, reward: float, oldest: str, current: str, **more: Any) -> dict[str, Any]:
    record = synthetic(task_index, repeat, reward)
    lag = int(current) - int(oldest)
    record["weight_versions"] = {"set": [oldest], "min": oldest, "max": oldest, "current": current, "staleness": lag}
    return record | more


def test_export_leaves_out_stale_rows_and_their_group_statistics_and_counts_them(tmp_path: Path) -> None:
    stale_ended = synthetic(0, 3, None, status="aborted") | {"stop_reason": "stale"}
    records = [
        versioned(0, 0, 1.0, "5", "6"),
        versioned(0, 1, 0.0, "2", "6"),  # 4 behind: out
        versioned(0, 2, 0.0, "6", "6"),
        stale_ended,
        synthetic(1, 0, 1.0),  # no versions: its staleness cannot be known, kept and counted
    ]
    source = write_records(tmp_path / "records.jsonl", records)
    stats = export(source, tmp_path / "rows.jsonl", max_staleness=1)
    rows = [orjson.loads(line) for line in (tmp_path / "rows.jsonl").read_bytes().splitlines()]
    assert stats.stale_left_out == 2 and stats.staleness_unknown_kept == 1 and stats.records == 5
    group0 = {row["episode_id"]: row["advantage"] for row in rows if row["task_index"] == 0}
    assert group0 == {"t0-r0": 0.5, "t0-r2": -0.5}, "the group's mean is over the fresh episodes only"
    now = export(source, tmp_path / "now.jsonl", max_staleness=1, current_version="7")
    assert now.stale_left_out == 3, "against the trainer's version now, the 5 is two behind as well"
    plain = export(source, tmp_path / "plain.jsonl")
    assert plain.stale_left_out == 0 and plain.aborted_left_out == 1


def test_export_checks_the_bound_and_the_weight_versions_it_reads(tmp_path: Path) -> None:
    source = write_records(tmp_path / "r.jsonl", [versioned(0, 0, 1.0, "1", "2")])
    with pytest.raises(UsageError, match="max_staleness"):
        export(source, tmp_path / "a.jsonl", max_staleness=-1)
    with pytest.raises(UsageError, match="current_version"):
        export(source, tmp_path / "a.jsonl", current_version="3")
    bad = versioned(0, 0, 1.0, "1", "2")
    bad["weight_versions"]["staleness"] = "two"
    source = write_records(tmp_path / "bad.jsonl", [bad, synthetic(1, 0, 1.0) | {"reward": "high"}])
    with pytest.raises(InputError, match=r"bad\.jsonl:1: field weight_versions\.staleness"):
        export(source, tmp_path / "b.jsonl", max_staleness=1)
    fresh_then_bad = [versioned(0, 0, 1.0, "1", "1"), synthetic(1, 0, 1.0) | {"reward": "high"}]
    with pytest.raises(InputError, match=r"bad2\.jsonl:2: field reward"):  # the usual record checks still run
        export(write_records(tmp_path / "bad2.jsonl", fresh_then_bad), tmp_path / "c.jsonl", max_staleness=1)
    assert not (tmp_path / "b.jsonl").exists()


def test_the_setting_has_a_rule_a_flag_and_a_place_in_studios_form() -> None:
    with pytest.raises(SettingsError, match="max_staleness: must be at least 0"):
        EpisodeSettings(max_staleness=-1)
    args = make_parser().parse_args(
        [
            "collect",
            "--input",
            "x",
            "--output",
            "y",
            "--max-staleness",
            "-2",
            "--policy-base-url",
            "http://h/v1",
            "--user-base-url",
            "http://h/v1",
        ]
    )
    with pytest.raises(UsageError, match="--max-staleness: must be at least 0, got -2"):
        settings_from_args(args, "tictactoe")
    args = make_parser().parse_args(["run", "--max-staleness", "3", "--policy-base-url", "http://h/v1"])
    assert settings_from_args(args, "tictactoe", require=("policy",)).max_staleness == 3
    names = {f.name for f in dataclasses.fields(settings_schema("tictactoe"))}
    assert "max_staleness" in names


async def test_the_service_takes_max_staleness_per_request_within_its_rule() -> None:
    async with FakeModelServer(
        {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    ) as models:
        args = make_parser().parse_args(
            ["serve", "--policy-base-url", models.base_url, "--user-base-url", models.base_url]
        )
        app = create_app(
            ServerSettings(),
            lambda env: dataclasses.replace(settings_from_args(args, env), user_tool_choice="required"),
        )
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                refused = await http.post("/v1/rollouts", json={"task": {}, "settings": {"max_staleness": -1}})
                played = await http.post("/v1/rollouts", json={"task": {}, "settings": {"max_staleness": 0}})
    assert refused.status_code == 422 and "max_staleness" in refused.text
    assert played.status_code == 200, played.text
