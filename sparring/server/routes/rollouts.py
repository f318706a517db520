"""`POST /v1/rollouts` (one task, its records when done) and `POST /v1/rollouts/batch` (NDJSON as episodes end)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from sparring.core.task import TaskError, parse_task
from sparring.server import nemo_gym
from sparring.server.errors import ENV_URL_REFUSED, ERROR_RESPONSES, unprocessable
from sparring.server.routes import Service
from sparring.server.schemas import RequestModels, RolloutsResponse
from sparring.server.service import RolloutService
from sparring.server.streams import NDJSON, RecordStream, collect
from sparring.web.body import JSONRoute, json_response

# No `from __future__ import annotations`: FastAPI must see the per-app request models in the signatures.


def router(models: RequestModels) -> APIRouter:
    """The rollout routes, with this app's request models."""
    routes = APIRouter(route_class=JSONRoute)

    @routes.post(
        "/v1/rollouts",
        summary="Play one task (repeats times) and return its records",
        response_model=None,
        responses={200: {"model": RolloutsResponse}, **ENV_URL_REFUSED, **ERROR_RESPONSES},
    )
    async def rollouts(body: models.rollout, request: Request, service: Service) -> Response:  # type: ignore[name-defined]
        task = resolve(service, body.env, body.task, ["task"])
        play = service.admit([task], body.repeats, overrides(body.settings), body.repeats)
        records = await collect(play, request)
        for record in records:
            record["task_index"] = None  # one task, as `sparring run --task`
        records.sort(key=lambda r: r["repeat_index"])
        return json_response({"records": records})

    @routes.post(
        "/v1/rollouts/batch",
        summary="Play many tasks; records stream back as NDJSON as episodes finish, then a summary line",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": 'One rollout record per line, in completion order, then `{"summary": {...}}`.',
                "content": {NDJSON: {"schema": {"anyOf": [_ref("RecordModel"), _ref("BatchSummaryLine")]}}},
            },
            **ENV_URL_REFUSED,
            **ERROR_RESPONSES,
        },
    )
    async def batch(body: models.batch, service: Service) -> Response:  # type: ignore[name-defined]
        tasks = [resolve(service, body.env, row, ["tasks", i]) for i, row in enumerate(body.tasks)]
        concurrency = body.concurrency or service.settings.batch_concurrency
        play = service.admit(tasks, body.repeats, overrides(body.settings), concurrency)
        return RecordStream(play)

    return routes


def resolve(
    service: RolloutService, env: str | None, task: BaseModel | dict[str, Any], where: list[str | int]
) -> tuple[str, dict[str, Any]]:
    """The environment and the task (sparring's, or a NeMo Gym row's), or a 422 naming the field (403: its env_url)."""
    row = task.model_dump(exclude_none=True) if isinstance(task, BaseModel) else task
    try:
        if "responses_create_params" in row:
            parsed = nemo_gym.row_to_task(row, ".".join(map(str, where)))
        else:
            parsed = parse_task(row, ".".join(map(str, where)))
    except TaskError as exc:
        raise unprocessable(["body", *where], str(exc)) from None
    name = env or row.get("env") or service.settings.default_env
    service.check_env_url(name, parsed, ".".join(map(str, where)))
    return name, parsed


def overrides(settings_model: Any) -> dict[str, Any]:
    """A request's `settings` as the changes it makes (unset fields keep the server's defaults)."""
    return settings_model.model_dump(exclude_none=True) if settings_model is not None else {}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
