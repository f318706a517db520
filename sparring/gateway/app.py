"""`sparring gateway`'s own app, and the gateway built from the episode settings `sparring run` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry

from sparring import __version__
from sparring.core.settings import EpisodeSettings
from sparring.gateway.routes import gateway_router
from sparring.gateway.sessions import Gateway
from sparring.gateway.settings import GatewaySettings
from sparring.gateway.upstream import Upstream
from sparring.models.pool import endpoint_config
from sparring.web.auth import BearerAuth
from sparring.web.body import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, validation_error
from sparring.web.metrics import HttpMetrics, metrics_endpoint


def build_gateway(
    config: EpisodeSettings,
    *,
    output: str | Path | None = None,
    registry: CollectorRegistry | None = None,
    **settings: Any,
) -> Gateway:
    """A gateway in front of `config`'s policy endpoint; its sampling settings fill what agents leave unset.

    A verifier may contact `config.env_url` and `config.allow_env_urls`, nothing else; `settings` are
    GatewaySettings' bounds (idle_timeout_s, keep_ended, max_sessions, ..., operator_key).
    """
    sampling = {
        key: value
        for key, value in (
            ("temperature", config.policy_temperature),
            ("top_p", config.policy_top_p),
            ("max_tokens", config.policy_max_tokens),
        )
        if value is not None
    }
    gateway_settings = GatewaySettings(
        model=config.policy_model,
        sampling=sampling,
        output=Path(output) if output is not None else None,
        env_url=config.env_url,
        allow_env_urls=tuple(config.allow_env_urls),
        **settings,
    )
    return Gateway(Upstream(endpoint_config(config, "policy")), gateway_settings, registry)


def create_app(
    gateway: Gateway,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The gateway alone: its routes behind bearer auth and the body limit, `/healthz`, `/metrics`.

    The gateway's operator key passes the auth as the API key does.
    """
    registry = registry or CollectorRegistry()
    app = FastAPI(
        title="sparring agent gateway",
        version=__version__,
        description="An OpenAI-compatible endpoint per session that records the policy's exact tokens.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    # before the body is read; /healthz stays open
    app.add_middleware(BearerAuth, api_key=api_key, operator_key=gateway.settings.operator_key)
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(gateway_router(gateway))
    app.add_api_route("/healthz", _healthz, methods=["GET"], summary="The process is up (no auth)")
    app.add_api_route("/metrics", metrics_endpoint(registry), methods=["GET"], summary="Prometheus")
    return app


async def _healthz() -> dict[str, str]:
    return {"status": "ok"}
