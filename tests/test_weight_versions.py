"""Weight versions in the data: spans per policy call from the server, per record, per export row, in the metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from engine_harness import episode_engine, players

from sparring import Engine
from sparring.core.versions import append_spans, episode_versions, in_order, spans_from_server, staleness
from sparring.engine.export import export
from sparring.engine.metrics import compute_metrics
from sparring.models.client import EndpointConfig, ModelClient
from sparring.models.generation import GenerationControl
from sparring.testing import FakeModelServer, TokenGate


def policy_control(engine: Engine) -> GenerationControl:
    """The control of the client the engine's tictactoe episodes call the policy through."""
    return engine.clients.clients(engine.settings_for("tictactoe"))[0].control


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


# --- the rules --------------------------------------------------------------------------------------


def test_versions_order_as_numbers_when_every_label_is_one_else_by_first_appearance() -> None:
    assert in_order(["10", "9", "-1"]) == ["-1", "9", "10"]
    assert in_order(["b", "a", "10"]) == ["b", "a", "10"]
    assert staleness("3", "7") == 4 and staleness("v2", "v2") == 0
    assert staleness("default", "7") is None and staleness("3", None) is None
    spans = [{"version": "b", "start": 0, "end": 2}], [{"version": "a", "start": 0, "end": 1}], None
    assert episode_versions(spans, "a") == {
        "set": ["b", "a"],
        "min": "b",
        "max": "a",
        "current": "a",
        "staleness": None,
    }
    numeric = [{"version": "12", "start": 0, "end": 1}, {"version": "9", "start": 1, "end": 3}], None
    assert episode_versions(numeric, "14") == {
        "set": ["9", "12"],
        "min": "9",
        "max": "12",
        "current": "14",
        "staleness": 5,
    }
    assert episode_versions([None, None], "3") is None


def test_server_spans_are_checked_and_joined_without_seams() -> None:
    assert spans_from_server(None, 3) is None
    assert spans_from_server([], 0) == []
    good = [{"version": "1", "start": 0, "end": 2}, {"version": "2", "start": 2, "end": 5}]
    assert spans_from_server(good, 5) == good
    for bad, problem in [
        (good, "cover 5 tokens but the reply has 6"),
        ([{"version": 1, "start": 0, "end": 6}], "needs a string version"),
        ([{"version": "1", "start": 1, "end": 6}], "must tile the output"),
        ({"version": "1"}, "must be a list"),
    ]:
        with pytest.raises(ValueError, match=problem):
            spans_from_server(bad, 6)
    joined = append_spans(good, [{"version": "2", "start": 0, "end": 3}, {"version": "3", "start": 3, "end": 4}], 5)
    assert joined == [
        {"version": "1", "start": 0, "end": 2},
        {"version": "2", "start": 2, "end": 8},
        {"version": "3", "start": 8, "end": 9},
    ]


# --- episodes ---------------------------------------------------------------------------------------


async def test_every_tito_call_carries_the_servers_spans_and_the_record_sums_them_up() -> None:
    async with FakeModelServer(players()) as server, episode_engine(server, token_mode="tito") as engine:
        record = await engine.play({})
    calls = record["trajectory"]["calls"]
    assert calls and all(
        c["weight_versions"] == [{"version": "default", "start": 0, "end": c["completion_len"]}] for c in calls
    )
    assert all(c["resumed"] == 0 for c in calls)
    assert record["weight_versions"] == {
        "set": ["default"],
        "min": "default",
        "max": "default",
        "current": None,  # nobody told sparring a version
        "staleness": None,
    }


async def test_the_chat_path_has_no_versions_and_says_null() -> None:
    async with FakeModelServer(players()) as server, episode_engine(server, token_mode="chat") as engine:
        policy_control(engine).version = "3"
        record = await engine.play({})
    assert record["reward"] == 1.0 and record["trajectory"]["calls"]
    assert all(c["weight_versions"] is None for c in record["trajectory"]["calls"])
    assert record["weight_versions"] is None


async def test_a_version_update_mid_reply_gives_the_call_two_spans_down_to_the_export_row(tmp_path: Path) -> None:
    gate = TokenGate()
    async with (
        FakeModelServer(players(), token_gate=gate, weight_version="0") as server,
        episode_engine(server, token_mode="tito") as engine,
    ):
        control = policy_control(engine)
        control.version = "0"
        episode = asyncio.create_task(engine.play({}))
        gate.allow(5)  # the policy speaks first: these are its first reply's first tokens
        await server.wait_until(lambda: gate.passed == 5)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/update_weight_version", json={"new_version": "1"})).status_code == 200
        control.version = "1"
        gate.open()
        record = await asyncio.wait_for(episode, 60)
    assert record["reward"] == 1.0
    first, *rest = record["trajectory"]["calls"]
    assert first["weight_versions"] == [
        {"version": "0", "start": 0, "end": 5},
        {"version": "1", "start": 5, "end": first["completion_len"]},
    ]
    assert rest and all(
        c["weight_versions"] == [{"version": "1", "start": 0, "end": c["completion_len"]}] for c in rest
    )
    assert record["weight_versions"] == {"set": ["0", "1"], "min": "0", "max": "1", "current": "1", "staleness": 1}

    records = write_records(tmp_path / "r.jsonl", [record])
    export(records, tmp_path / "train.parquet")
    (row,) = pq.read_table(tmp_path / "train.parquet").to_pylist()
    expected = []
    for call in record["trajectory"]["calls"]:
        expected += [
            {**s, "start": s["start"] + call["prompt_len"], "end": s["end"] + call["prompt_len"]}
            for s in call["weight_versions"]
        ]
    assert row["weight_versions"] == expected
    covered = {i for span in row["weight_versions"] for i in range(span["start"], span["end"])}
    assert covered == {i for i, m in enumerate(row["loss_mask"]) if m}, "exactly the sampled tokens have versions"


async def test_a_call_sent_to_a_lora_adapter_has_the_adapters_version_whatever_the_servers_label(
    tmp_path: Path,
) -> None:
    adapter = tmp_path / "step-7"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    async with FakeModelServer({"policy": "Hello there."}, weight_version="6") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            loaded = await http.post("/v1/load_lora_adapter", json={"lora_name": "step-7", "lora_path": str(adapter)})
            assert loaded.status_code == 200
        client = ModelClient(EndpointConfig((server.base_url,), "policy", capture_tokens=True))
        client.control.adapter, client.control.version = "step-7", "7"
        try:
            tokens = await client.complete_tokens([1, 2, 3], episode_id="e1", sampling={"max_tokens": 50})
            chat = await client.chat([{"role": "user", "content": "hi"}], episode_id="e2", sampling={})
        finally:
            await client.aclose()
    assert [r["model"] for r in server.requests] == ["step-7", "step-7"]
    assert tokens.weight_versions == [{"version": "7", "start": 0, "end": len(tokens.completion_token_ids or [])}]
    assert chat.weight_versions == [{"version": "7", "start": 0, "end": len(chat.completion_token_ids or [])}]


# --- metrics ----------------------------------------------------------------------------------------


def test_the_metrics_have_a_staleness_histogram() -> None:
    def record(versions: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": "x", "status": "completed", "reward": 1.0, "weight_versions": versions}

    def versions(oldest: str, current: str | None) -> dict[str, Any]:
        return episode_versions([[{"version": oldest, "start": 0, "end": 1}]], current)  # type: ignore[return-value]

    records = [
        record(versions("3", "3")),
        record(versions("2", "3")),
        record(versions("1", "3")),
        record(versions("2", "3")),
        record(versions("default", "3")),
        record(None),
    ]
    assert compute_metrics(records)["staleness"] == {
        "histogram": {"0": 1, "1": 2, "2": 1},
        "unknown": 1,
        "without_versions": 1,
        "ended_stale": 0,
        "dropped": 0,
    }
