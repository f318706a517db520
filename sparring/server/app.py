"""The FastAPI app of `sparring serve`: rollouts for trainers over HTTP, and a NeMo Gym agent server.

`create_app(settings, config_for)` builds it; `config_for(env)` gives the episode settings (model
endpoints, limits) exactly as `sparring run` would, and requests may override limits and sampling
within `settings`' bounds. Extra routers (the agent gateway's sessions) are mounted behind the same
auth, body limit and metrics. Every route plays the one graph through the one batch runner (`service.py`).

No `from __future__ import annotations` here: the request models are built per app (they carry its
bounds), and FastAPI must see the real classes in the route signatures.
"""

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from sparring import __version__
from sparring.core.settings import EpisodeSettings
from sparring.core.task import TaskError, parse_task
from sparring.envs.registry import environment_names, get_environment
from sparring.graphs.episode import build_graph
from sparring.server import nemo_gym
from sparring.server.gate import Overloaded
from sparring.server.routes import weights
from sparring.server.schemas import (
    AggregateMetricsRequest,
    AggregateMetricsResponse,
    BatchSummaryLine,
    EnvsResponse,
    GraphResponse,
    HealthResponse,
    ReadinessResponse,
    RolloutsResponse,
    build_request_models,
)
from sparring.server.security import BearerAuth, BodySizeLimit, HttpMetrics, metrics_endpoint
from sparring.server.service import Play, RolloutService, ShuttingDown
from sparring.server.settings import ServerSettings

NDJSON = "application/x-ndjson"
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token (when the server has an API key).", **_ERROR},
    413: {"description": "Request body over --max-body-bytes.", **_ERROR},
    429: {"description": "No room: episodes running and queued are at their bounds; see Retry-After.", **_ERROR},
    503: {"description": "The server is shutting down.", **_ERROR},
}
_SECRET_SETTINGS = ("policy_api_key", "user_api_key")


class ClientGone(Exception):
    """The client disconnected before its episodes finished; they were cancelled."""


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
    graph_cache: dict[str, dict[str, Any]] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.loop = asyncio.get_running_loop()
        yield
        await service.aclose()

    app = FastAPI(
        title="sparring rollout service",
        version=__version__,
        description=(
            "Multi-turn RL rollouts (policy, simulated user, tools, verifier) on one LangGraph graph. "
            "Records are those `sparring run` writes; `/run` and `/aggregate_metrics` follow NeMo Gym's agent servers."
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ShuttingDown, _shutting_down)
    app.add_exception_handler(ClientGone, _client_gone)
    auth = [Depends(BearerAuth(settings.api_key))]
    router = APIRouter()

    def resolve(
        env: str | None, task: BaseModel | dict[str, Any], where: list[str | int]
    ) -> tuple[str, dict[str, Any]]:
        """The environment and the task (sparring's, or converted from a NeMo Gym row), or a 422 naming the field."""
        row = task.model_dump(exclude_none=True) if isinstance(task, BaseModel) else task
        try:
            if "responses_create_params" in row:
                parsed = nemo_gym.row_to_task(row, ".".join(map(str, where)))
            else:
                parsed = parse_task(row, ".".join(map(str, where)))
        except TaskError as exc:
            raise _unprocessable(["body", *where], str(exc)) from None
        return env or row.get("env") or settings.default_env, parsed

    @router.post(
        "/v1/rollouts",
        summary="Play one task (repeats times) and return its records",
        response_model=None,
        responses={200: {"model": RolloutsResponse}, **ERROR_RESPONSES},
    )
    async def rollouts(body: models.rollout, request: Request) -> Response:  # type: ignore[valid-type]
        play = service.admit(
            [resolve(body.env, body.task, ["task"])], body.repeats, _overrides(body.settings), body.repeats
        )
        records = await _collect(play, request)
        for record in records:
            record["task_index"] = None  # one task, as `sparring run --task`
        records.sort(key=lambda r: r["repeat_index"])
        return _json({"records": records})

    @router.post(
        "/v1/rollouts/batch",
        summary="Play many tasks; records stream back as NDJSON as episodes finish, then a summary line",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": 'One rollout record per line, in completion order, then `{"summary": {...}}`.',
                "content": {NDJSON: {"schema": {"anyOf": [_ref("RecordModel"), _ref("BatchSummaryLine")]}}},
            },
            **ERROR_RESPONSES,
        },
    )
    async def batch(body: models.batch) -> Response:  # type: ignore[valid-type]
        tasks = [resolve(body.env, row, ["tasks", i]) for i, row in enumerate(body.tasks)]
        concurrency = body.concurrency or settings.batch_concurrency
        play = service.admit(tasks, body.repeats, _overrides(body.settings), concurrency)
        return RecordStream(play)

    @router.post(
        "/run",
        summary="NeMo Gym agent server: play one row, answer in its verify-response shape",
        response_model=None,
        responses={
            200: {"description": "The row, `response` (Responses API object, token ids on policy items), `reward`."},
            502: {"description": "The episode aborted (model or environment failure); the record is in the body."},
            422: {"description": "Invalid row, or one the environment cannot seed (then with the record)."},
            **ERROR_RESPONSES,
        },
    )
    async def run(body: models.run, request: Request) -> Response:  # type: ignore[valid-type]
        row = body.model_dump()
        params = row["responses_create_params"]
        env = row.get("env") or settings.default_env
        try:
            task = nemo_gym.row_to_task(row, "row")
        except TaskError as exc:
            raise _unprocessable(["body"], str(exc)) from None
        play = service.admit([(env, task)], 1, nemo_gym.sampling_overrides(params), 1)
        record = (await _collect(play, request))[0]
        if record["status"] == "aborted":
            error = record["error"] or {}
            detail = f"episode aborted ({record['stop_reason']}): {error.get('type')}: {error.get('message')}"
            # A row the environment cannot seed is the caller's to fix; a model or env failure is ours (upstream).
            status = 422 if record["stop_reason"] == "invalid_task" else 502
            return _json({"detail": detail, "record": record}, status_code=status)
        config = service.config(env, nemo_gym.sampling_overrides(params))
        tools = params["tools"] or [nemo_gym.responses_tool(spec) for spec in get_environment(env).tools("policy")]
        answer = nemo_gym.verify_response(
            row, params, record, model=config.policy_model, tools=tools, num_input_messages=len(task["messages"])
        )
        return _json(answer)

    @router.post("/aggregate_metrics", summary="NeMo Gym's aggregate metrics of verify responses")
    async def aggregate_metrics(body: AggregateMetricsRequest) -> AggregateMetricsResponse:
        return AggregateMetricsResponse(**nemo_gym.aggregate_metrics(body.verify_responses))

    @router.get("/v1/envs", summary="Environments: tool schemas per actor and the settings they run with")
    async def envs() -> EnvsResponse:
        listing = []
        for name in environment_names():
            env = get_environment(name)
            tools = {actor: [spec.to_openai() for spec in env.tools(actor)] for actor in ("policy", "user")}
            config = dataclasses.asdict(service.base_config(name))
            for secret in _SECRET_SETTINGS:
                config[secret] = "***" if config.get(secret) else None
            listing.append({"name": name, "tools": tools, "settings": config})
        return EnvsResponse(envs=listing)

    @router.get("/v1/graph", summary="The episode graph: Mermaid text, nodes and edges")
    async def graph(
        env: Annotated[models.env, Query(description="Environment whose graph to draw.")] = settings.default_env,  # type: ignore[valid-type]
    ) -> GraphResponse:
        if env not in graph_cache:
            drawable = build_graph(get_environment(env)).get_graph()
            graph_cache[env] = {
                "env": env,
                "mermaid": drawable.draw_mermaid(),
                "nodes": [{"id": node.id, "name": node.name} for node in drawable.nodes.values()],
                "edges": [
                    {"source": edge.source, "target": edge.target, "conditional": edge.conditional}
                    for edge in drawable.edges
                ],
            }
        return GraphResponse(**graph_cache[env])

    @router.get(
        "/readyz",
        summary="Whether the model endpoints answer",
        responses={503: {"model": ReadinessResponse, "description": "Some endpoint does not answer; named."}},
    )
    async def readyz() -> Response:
        ready, report = await service.readiness()
        if service.draining:
            ready = False
        body = {"status": "ready" if ready else "not ready", "endpoints": report}
        return _json(ReadinessResponse(**body).model_dump(), status_code=200 if ready else 503)

    @app.get("/healthz", summary="The process is up (no auth)")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    app.include_router(router, dependencies=auth)
    app.include_router(weights.router(), dependencies=auth)
    for extra in extra_routers:
        app.include_router(extra, dependencies=auth)
    app.add_api_route(
        "/metrics",
        metrics_endpoint(registry),
        methods=["GET"],
        dependencies=auth,
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
        responses={401: ERROR_RESPONSES[401]},
    )
    _document_errors(app)
    return app


class RecordStream(StreamingResponse):
    """NDJSON records of a batch, one whole line per chunk, then the summary line.

    A client that goes away cancels the stream at once (not at the next write), which cancels the
    batch's running episodes; the batch's slots and room are given back however the stream ends.
    """

    def __init__(self, play: Play) -> None:
        self.play = play
        super().__init__(self._lines(), media_type=NDJSON)

    async def _lines(self) -> AsyncIterator[bytes]:
        async for record in self.play.records():
            yield _dumps(record) + b"\n"
        yield _dumps({"summary": self.play.summary()}) + b"\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.create_task(self.stream_response(send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            results = await asyncio.gather(stream, gone, return_exceptions=True)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.play.release()
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, (asyncio.CancelledError, OSError)):
            raise failure


async def _collect(play: Play, request: Request) -> list[dict[str, Any]]:
    """All of a request's records; a client that disconnects first cancels its episodes."""

    async def gather() -> list[dict[str, Any]]:
        return [record async for record in play.records()]

    work = asyncio.create_task(gather())
    gone = asyncio.create_task(_disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientGone("the client disconnected; its episodes were cancelled")
        return work.result()
    finally:
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
        play.release()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read already, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _overrides(settings_model: Any) -> dict[str, Any]:
    return settings_model.model_dump(exclude_none=True) if settings_model is not None else {}


def _unprocessable(loc: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, so clients parse every validation error alike."""
    return HTTPException(status_code=422, detail=[{"type": "value_error", "loc": loc, "msg": message}])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(_dumps(content), status_code=status_code, media_type="application/json")


def _dumps(content: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses (a client's integers beyond 64 bits, echoed back)."""
    try:
        return orjson.dumps(content)
    except TypeError:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


async def _overloaded(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Overloaded)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


async def _shutting_down(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the metrics do


def _document_errors(app: FastAPI) -> None:
    """Add the `{"detail": "..."}` error body and the batch summary line to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["HTTPError"] = {
            "type": "object",
            "properties": {"detail": {"title": "Detail"}},
            "required": ["detail"],
            "title": "HTTPError",
        }
        line = BatchSummaryLine.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(line.pop("$defs", {}))
        components["BatchSummaryLine"] = line
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
