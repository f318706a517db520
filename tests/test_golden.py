"""Records for a fixed seed against the scripted server stay what they were, field for field, on every face.

`tests/golden/records.jsonl` was written once by the code before the engine refactor; each face
(`sparring run`, `sparring collect`, `sparring serve`'s batch endpoint, the Studio graph that
langgraph.json names) plays the same cases against a fresh scripted server and must give the same
records, except the episode id and timing. Regenerate only for a deliberate change of records:
`SPARRING_WRITE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py` (and say why in the commit).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sparring.testing import FakeModelProcess

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "records.jsonl"
SPARRING = [sys.executable, "-m", "sparring.cli"]
WRITE = os.environ.get("SPARRING_WRITE_GOLDEN") == "1"

# (case name, scripted preset, environment, task, CLI flags of the settings)
CASES: list[tuple[str, str, str, dict[str, Any], list[str]]] = [
    ("tictactoe-default-chat", "tictactoe", "tictactoe", {"id": "g1"}, []),
    (
        "tictactoe-seeded-tito",
        "tictactoe",
        "tictactoe",
        {"id": "g2", "env_seed": {"initial_moves": [{"position": 0, "mark": "X"}, {"position": 4, "mark": "O"}]}},
        ["--token-mode", "tito"],  # no local tokenizer: the server renders the prompts
    ),
    (
        "tictactoe-limits-chat",
        "tictactoe",
        "tictactoe",
        {"id": "g3", "limits": {"max_turns": 2}, "metadata": {"note": "kept"}},
        ["--max-user-steps-per-turn", "3"],
    ),
    ("support-desk-sd12-chat", "support-desk", "support-desk", {"id": "g4", "env_seed": {"task_id": "sd-12"}}, []),
    ("calendar-default-chat", "calendar", "calendar", {"id": "g5"}, []),
]
VOLATILE = ("id", "timing")


def normalised(record: dict[str, Any]) -> dict[str, Any]:
    """The record without what differs run to run (its id and timing)."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def endpoint_flags(url: str) -> list[str]:
    return ["--policy-base-url", url, "--user-base-url", url, "--timeout", "60"]


@contextmanager
def scripted(preset: str) -> Iterator[str]:
    with FakeModelProcess(preset) as server:
        yield server.base_url


def read_golden() -> dict[str, dict[str, Any]]:
    lines = [orjson.loads(line) for line in GOLDEN.read_bytes().splitlines()]
    return {line["case"]: line["record"] for line in lines}


def check(face: str, got: dict[str, dict[str, Any]]) -> None:
    """Compare with the golden records; with SPARRING_WRITE_GOLDEN=1 the `run` face writes them."""
    got = {case: normalised(record) for case, record in got.items()}
    if WRITE and face == "run":
        GOLDEN.parent.mkdir(exist_ok=True)
        lines = (orjson.dumps({"case": c, "record": r}, option=orjson.OPT_SORT_KEYS) for c, r in got.items())
        GOLDEN.write_bytes(b"".join(line + b"\n" for line in lines))
        return
    golden = read_golden()
    assert sorted(got) == sorted(golden)
    for case, record in got.items():
        expected = dict(golden[case])
        if face in ("collect", "service"):  # indices come from the batch position there, None for `run`
            expected = expected | {"task_index": record["task_index"], "repeat_index": record["repeat_index"]}
        differing = sorted(k for k in set(expected) | set(record) if expected.get(k) != record.get(k))
        assert not differing, f"{face} / {case}: fields differ from the golden record: {differing}"


def test_run_records_match_the_golden_file() -> None:
    got = {}
    for case, preset, env, task, flags in CASES:
        with scripted(preset) as url:
            argv = ["run", "--env", env, "--task", json.dumps(task), "--json", "--quiet"]
            proc = subprocess.run(
                [*SPARRING, *argv, *flags, *endpoint_flags(url)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert proc.returncode == 0, proc.stderr
        got[case] = json.loads(proc.stdout.strip().splitlines()[-1])
    check("run", got)


def test_collect_records_match_the_golden_file(tmp_path: Path) -> None:
    if WRITE:
        pytest.skip("writing the golden file")
    got = {}
    for case, preset, env, task, flags in CASES:
        tasks = tmp_path / f"{case}.jsonl"
        tasks.write_text(json.dumps(task) + "\n")
        output = tmp_path / f"{case}.out.jsonl"
        with scripted(preset) as url:
            argv = ["collect", "--env", env, "--input", str(tasks), "--output", str(output), "--quiet"]
            proc = subprocess.run(
                [*SPARRING, *argv, *flags, *endpoint_flags(url)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert proc.returncode == 0, proc.stderr
        (line,) = output.read_bytes().splitlines()
        got[case] = orjson.loads(line)
    check("collect", got)


async def test_service_records_match_the_golden_file() -> None:
    if WRITE:
        pytest.skip("writing the golden file")
    got = {}
    for case, preset, env, task, flags in CASES:
        with scripted(preset) as url:
            process = await asyncio.create_subprocess_exec(
                *SPARRING,
                *("serve", "--port", "0", "--env", env, *endpoint_flags(url), *flags),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert process.stdout is not None
                banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
                base = banner.split("listening on ")[1].split()[0]
                async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                    response = await client.post("/v1/rollouts/batch", json={"tasks": [task]})
                assert response.status_code == 200, response.text
                record, _summary = (json.loads(line) for line in response.text.splitlines())
                got[case] = record
            finally:
                process.terminate()
                await process.wait()
    check("service", got)


async def test_studio_graph_records_match_the_golden_file() -> None:
    """The graph langgraph.json serves, run as Studio runs it: the task as input, the settings as context."""
    if WRITE:
        pytest.skip("writing the golden file")
    graphs = json.loads((REPO / "langgraph.json").read_text())["graphs"]
    from sparring.core.record import build_record

    got = {}
    for case, preset, env, task, flags in CASES:
        module_name, variable = graphs[env.replace("-", "_")]["path"].split(":")
        graph = getattr(importlib.import_module(module_name), variable)
        options = dict(zip(flags[::2], flags[1::2], strict=True))
        with scripted(preset) as url:
            context: dict[str, Any] = {
                "policy_base_urls": [url],
                "user_base_urls": [url],
                "request_timeout_s": 60.0,
                "policy_model": "policy",  # as `run` with explicit URLs, whatever `sparring models up` started
                "user_model": "user",
                "policy_tokenizer": None,
            }
            if "--token-mode" in options:
                context["token_mode"] = options["--token-mode"]
            if "--max-user-steps-per-turn" in options:
                context["max_user_steps_per_turn"] = int(options["--max-user-steps-per-turn"])
            defaults = graph.builder.context_schema()
            settings = type(defaults)(**{**defaults.__dict__, **context})
            state = await graph.ainvoke({"task": task}, context=settings)
        got[case] = build_record(state, env=env, episode_id=state["episode_id"])
    check("studio", got)
