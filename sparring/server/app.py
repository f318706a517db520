"""The FastAPI app of `sparring serve`: rollouts for trainers over HTTP, and a NeMo Gym agent server.

`create_app(settings, config_for)` assembles it; `config_for(env)` gives the episode settings (model
endpoints, limits) exactly as `sparring run` would, and requests may override limits and sampling
within `settings`' bounds. The routes live in `routes/` (rollouts, NeMo Gym, weight sync,
information) and reach the service through `app.state.service`; extra routers (the agent gateway's sessions) are mounted
behind the same auth, body limit and metrics, which are middleware: auth is checked before a body
is read, on every path but `/healthz`. Every route plays the one graph through the one batch
runner (`service.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from sparring import __version__
from sparring.core.settings import EpisodeSettings
from sparring.envs.registry import environment_names
from sparring.server import errors
from sparring.server.routes import info, nemo_gym, rollouts, weights
from sparring.server.schemas import build_request_models
from sparring.server.service import RolloutService
from sparring.server.settings import ServerSettings
from sparring.web.auth import BearerAuth
from sparring.web.body import BodySizeLimit
from sparring.web.metrics import HttpMetrics


def create_app(
    settings: ServerSettings,
    config_for: Callable[[str], EpisodeSettings],
    *,
    extra_routers: Sequence[APIRouter] = (),
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The rollout service's app; `extra_routers` are mounted behind the same guards."""
    registry = registry or CollectorRegistry()
    service = RolloutService(settings, config_for, registry)
    service.base_config(settings.default_env)  # endpoint errors surface at start-up, not on the first request
    models = build_request_models(settings, environment_names())
    app = FastAPI(
        title="sparring rollout service",
        version=__version__,
        description=(
            "Multi-turn RL rollouts (policy, simulated user, tools, verifier) on one LangGraph graph. "
            "Records are those `sparring run` writes; `/run` and `/aggregate_metrics` follow NeMo Gym's agent servers."
        ),
        lifespan=_lifespan,
    )
    app.state.service = service
    # The last added runs first: metrics see every answer, auth comes before the body is read.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=settings.api_key, operator_key=settings.operator_key)
    app.add_middleware(HttpMetrics, registry=registry)
    errors.install(app)
    for router in (
        rollouts.router(models),
        nemo_gym.router(models),
        weights.router(),
        info.router(models, settings.default_env, registry),
    ):
        app.include_router(router)
    for router in extra_routers:
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: RolloutService = app.state.service
    service.loop = asyncio.get_running_loop()  # the SIGTERM handler calls into it
    yield
    await service.aclose()
