"""NeMo Gym's agent-server routes: `POST /run` (a row in, its verify-response shape out) and `POST /aggregate_metrics`.

No `from __future__ import annotations`: FastAPI must see the per-app request models in the signatures.
"""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sparring.core.task import TaskError
from sparring.envs.registry import get_environment
from sparring.server import nemo_gym
from sparring.server.errors import ENV_URL_REFUSED, ERROR_RESPONSES, unprocessable
from sparring.server.routes import Service
from sparring.server.schemas import AggregateMetricsRequest, AggregateMetricsResponse, RequestModels
from sparring.server.streams import collect
from sparring.web.body import JSONRoute, json_response


def router(models: RequestModels) -> APIRouter:
    """`/run` with this app's row model, and `/aggregate_metrics`."""
    routes = APIRouter(route_class=JSONRoute)

    @routes.post(
        "/run",
        summary="NeMo Gym agent server: play one row, answer in its verify-response shape",
        response_model=None,
        responses={
            200: {"description": "The row, `response` (Responses API object, token ids on policy items), `reward`."},
            502: {"description": "The episode aborted (model or environment failure); the record is in the body."},
            422: {"description": "Invalid row, or one the environment cannot seed (then with the record)."},
            **ENV_URL_REFUSED,
            **ERROR_RESPONSES,
        },
    )
    async def run(body: models.run, request: Request, service: Service) -> Response:  # type: ignore[name-defined]
        row = body.model_dump()
        params = row["responses_create_params"]
        env = row.get("env") or service.settings.default_env
        try:
            task = nemo_gym.row_to_task(row, "row")
        except TaskError as exc:
            raise unprocessable(["body"], str(exc)) from None
        service.check_env_url(env, task, "row")
        play = service.admit([(env, task)], 1, nemo_gym.sampling_overrides(params), 1)
        record = (await collect(play, request))[0]
        if record["status"] == "aborted":
            error = record["error"] or {}
            detail = f"episode aborted ({record['stop_reason']}): {error.get('type')}: {error.get('message')}"
            # A row the environment cannot seed is the caller's to fix; a model or env failure is ours (upstream).
            status = 422 if record["stop_reason"] == "invalid_task" else 502
            return json_response({"detail": detail, "record": record}, status_code=status)
        config = service.config(env, nemo_gym.sampling_overrides(params))
        tools = params["tools"] or [nemo_gym.responses_tool(spec) for spec in get_environment(env).tools("policy")]
        answer = nemo_gym.verify_response(
            row, params, record, model=config.policy_model, tools=tools, num_input_messages=len(task["messages"])
        )
        return json_response(answer)

    @routes.post(
        "/aggregate_metrics",
        summary="NeMo Gym's aggregate metrics of verify responses",
        responses={
            422: {"description": "A task index that is not an integer, or a statistic beyond a 64-bit float."},
            **{status: ERROR_RESPONSES[status] for status in (401, 413, 415)},
        },
    )
    async def aggregate_metrics(body: AggregateMetricsRequest) -> AggregateMetricsResponse:
        try:
            return AggregateMetricsResponse(**nemo_gym.aggregate_metrics(body.verify_responses))
        except nemo_gym.MetricsError as exc:
            raise unprocessable(["body", "verify_responses", *exc.loc], exc.message) from None

    return routes
