"""An Engine on the scripted server's tic-tac-toe players, for tests that play whole episodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sparring import Engine, EpisodeSettings
from sparring.testing import FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE


def players() -> dict[str, Any]:
    """X (the policy) and O (the user), each playing its fixed preference order."""
    return {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}


def episode_settings(server: FakeModelServer, **settings: Any) -> EpisodeSettings:
    """Both roles on `server`, the user made to move (a tool call), short timeouts; `settings` on top."""
    return EpisodeSettings(
        policy_base_urls=[server.base_url],
        user_base_urls=[server.base_url],
        user_tool_choice="required",
        request_timeout_s=5.0,
        **settings,
    )


@asynccontextmanager
async def episode_engine(server: FakeModelServer, **settings: Any) -> AsyncIterator[Engine]:
    """An engine with both roles on `server` (the user must move), closed on exit."""
    engine = Engine(episode_settings(server, **settings))
    try:
        yield engine
    finally:
        await engine.aclose()
