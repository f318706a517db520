"""Helpers for the service tests: the rollout service on real uvicorn (own thread and loop) over the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.testing import FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE


@dataclass
class Served:
    """A running service and the scripted model server behind it."""

    url: str
    app: FastAPI
    models: FakeModelServer

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)

    def model_calls(self) -> int:
        return len(self.models.requests)

    async def until_idle(self) -> None:
        """Wait (bounded) until the service runs no episode and holds no room."""
        gate = self.app.state.service.gate
        for _ in range(200):
            if gate.running == 0 and gate.claimed == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"still busy: {gate.running} running, {gate.claimed} claimed")


def cli_args(base_url: str, *extra: str) -> Any:
    """The namespace `sparring serve` would parse, so the service takes its endpoints exactly as the CLI does."""
    return make_parser().parse_args(["serve", "--policy-base-url", base_url, "--user-base-url", base_url, *extra])


@asynccontextmanager
async def serving(
    responders: Mapping[str, Any] | None = None, *, cli: Sequence[str] = (), **settings: Any
) -> AsyncIterator[Served]:
    """`async with serving(**server_settings) as served:` a service in front of a scripted tic-tac-toe pair.

    `cli` adds `sparring serve` flags for the episode settings (e.g. `--env-url`).
    """
    responders = responders or {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(responders) as models:
        args = cli_args(models.base_url, "--timeout", "60", *cli)
        app = create_app(ServerSettings(**settings), lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            yield Served(server.base_url, app, models)
