"""What the service tells about itself: `/v1/envs`, `/v1/graph`, `/readyz`, `/healthz` (open), `/metrics`.

No `from __future__ import annotations`: FastAPI must see the per-app environment type in the signatures.
"""

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry

from sparring.envs.registry import environment_names, get_environment
from sparring.server.errors import ERROR_RESPONSES
from sparring.server.routes import Service
from sparring.server.schemas import EnvsResponse, GraphResponse, HealthResponse, ReadinessResponse, RequestModels
from sparring.server.service import RolloutService
from sparring.web.body import JSONRoute, json_response
from sparring.web.metrics import metrics_endpoint


def router(models: RequestModels, default_env: str, registry: CollectorRegistry) -> APIRouter:
    """The informational routes of one app (its environments' enum, its default environment, its registry)."""
    routes = APIRouter(route_class=JSONRoute)
    drawings: dict[str, dict[str, Any]] = {}

    @routes.get("/v1/envs", summary="Environments: tool schemas per actor and the settings they run with")
    async def envs(service: Service) -> EnvsResponse:
        listing = []
        for name in environment_names():
            env = get_environment(name)
            tools = {actor: [spec.to_openai() for spec in env.tools(actor)] for actor in ("policy", "user")}
            config = dataclasses.asdict(service.base_config(name))
            for setting in config:  # every server's key (policy, user, judge): shown as set or not, never itself
                if setting.endswith("_api_key"):
                    config[setting] = "***" if config[setting] else None
            listing.append({"name": name, "tools": tools, "settings": config})
        return EnvsResponse(envs=listing)

    @routes.get("/v1/graph", summary="The episode graph: Mermaid text, nodes and edges")
    async def graph(
        service: Service,
        env: Annotated[models.env, Query(description="Environment whose graph to draw.")] = default_env,  # type: ignore[name-defined]
    ) -> GraphResponse:
        if env not in drawings:
            drawings[env] = drawing(service, env)
        return GraphResponse(**drawings[env])

    @routes.get(
        "/readyz",
        summary="Whether the model endpoints answer",
        responses={503: {"model": ReadinessResponse, "description": "Some endpoint does not answer; named."}},
    )
    async def readyz(service: Service) -> Response:
        ready, report = await service.readiness()
        if service.draining:
            ready = False
        body = {"status": "ready" if ready else "not ready", "endpoints": report}
        return json_response(ReadinessResponse(**body).model_dump(), status_code=200 if ready else 503)

    @routes.get("/healthz", summary="The process is up (no auth)")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    routes.add_api_route(
        "/metrics",
        metrics_endpoint(registry),
        methods=["GET"],
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
        responses={401: ERROR_RESPONSES[401]},
    )
    return routes


def drawing(service: RolloutService, env: str) -> dict[str, Any]:
    """An environment's graph (the one its episodes play on) as Mermaid text, nodes and edges."""
    drawable = service.engine.graph(env).get_graph()
    return {
        "env": env,
        "mermaid": drawable.draw_mermaid(),
        "nodes": [{"id": node.id, "name": node.name} for node in drawable.nodes.values()],
        "edges": [
            {"source": edge.source, "target": edge.target, "conditional": edge.conditional} for edge in drawable.edges
        ],
    }
