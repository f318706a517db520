"""`/v1/weights`: the weight-sync protocol over HTTP (pause, update, resume, state), on the engine's
`WeightSync` (engine/weights.py, where each step is described).

    POST /v1/weights/pause   {"mode": "keep" | "wait" | "abort", "timeout_s"?: seconds}
    POST /v1/weights/update  {"version": "8", "adapter"?: "/abs/path/on/the/vllm/machine"}
    POST /v1/weights/resume
    GET  /v1/weights

Bodies are checked before anything moves: unknown fields, a version outside its pattern, a time-out
that is not a finite number in range, an adapter path longer than `MAX_ADAPTER_PATH` are 422s naming
the field. The service never opens an adapter path: it must lie under an `--adapter-dir` folder (else
403; none given: adapter updates are off), and whether it exists is the vLLM servers' to say (422 when
none finds it). A version that is not newer than the current one is a 409. When every policy server
fails a step the answer is 502 and nothing changed; a replica that fails alone is taken out and named
in `taken_out`.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from sparring.core.errors import UsageError, WeightSyncFailed, WeightUpdateRefused
from sparring.engine.weights import MAX_ADAPTER_PATH, MIN_PAUSE_TIMEOUT_S, VERSION_PATTERN
from sparring.server.routes import Service
from sparring.web.body import JSONRoute

MAX_PAUSE_TIMEOUT_S = 86_400.0
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}}
_FAILED: dict[int | str, dict[str, Any]] = {
    502: {"description": "Every policy server failed the step; nothing changed (the detail says why).", **_ERROR},
}
_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "The adapter path is not under an allowed --adapter-dir (or none is allowed).", **_ERROR},
    409: {"description": "The version is not newer than the current one; nothing changed.", **_ERROR},
    422: {"description": "A field is invalid, or no policy server found the adapter; nothing changed."},
}
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token (when the server has an API key).", **_ERROR},
    413: {"description": "Request body over --max-body-bytes.", **_ERROR},
    415: {"description": "The body is not JSON (its Content-Type).", **_ERROR},
}


class PauseRequest(BaseModel):
    """How to pause: what happens to generations in flight, and when to resume if nobody does."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["keep", "wait", "abort"] = Field(
        description="keep: in-flight generations freeze and go on after resume; wait: they finish (the "
        "answer comes once they have), nothing new starts; abort: they end now and continue after resume."
    )
    timeout_s: float | None = Field(
        default=None,
        ge=MIN_PAUSE_TIMEOUT_S,
        le=MAX_PAUSE_TIMEOUT_S,
        allow_inf_nan=False,
        description="Resume on its own after this many seconds without a resume (default: --pause-timeout).",
    )


class UpdateRequest(BaseModel):
    """The new weights' version, and the LoRA adapter that holds them (absent: the trainer pushed them)."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(
        pattern=f"^{VERSION_PATTERN.pattern}$",
        description="The label tokens sampled from now on carry. Whole numbers must increase; other labels must "
        "be new.",
        examples=["8"],
    )
    adapter: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ADAPTER_PATH,
        description="Absolute path of a LoRA adapter folder on the vLLM machines, under an --adapter-dir.",
    )


class StepResponse(BaseModel):
    """The state after the step, each replica's outcome, and the replicas it took out of rotation."""

    step: Literal["pause", "update", "resume"]
    version: str | None
    adapter: str | None = Field(description="The adapter policy calls go to (null: the policy model).")
    paused: bool
    mode: Literal["keep", "wait", "abort"] | None
    replicas: dict[str, str] = Field(description='Per replica URL: "ok", or what failed.')
    taken_out: dict[str, str] = Field(description="Replicas this step took out of rotation, and why.")


class ReplicaWeightsResponse(BaseModel):
    url: str
    in_rotation: bool
    out_reason: str | None
    version: str | None = Field(description="What the server says (/weight_info); null if it did not answer.")
    paused: bool | None = Field(description="What the server says (/is_paused); null if it did not answer.")
    error: str | None


class WeightsResponse(BaseModel):
    """The version sparring was last told, where policy calls go, the pause, and every replica."""

    version: str | None
    adapter: str | None
    paused: bool
    mode: Literal["keep", "wait", "abort"] | None
    paused_for_s: float | None
    pause_timeout_s: float | None
    auto_resumes: int = Field(description="Pauses that ended on their own (time-out) since the server started.")
    replicas: list[ReplicaWeightsResponse]


def router() -> APIRouter:
    """The weight-sync routes."""
    routes = APIRouter(tags=["weights"], route_class=JSONRoute)  # finite numbers only, 415 for non-JSON

    @routes.post(
        "/v1/weights/pause",
        summary="Pause generation on every policy replica (keep, wait or abort what is in flight)",
        response_model=StepResponse,
        responses={**_FAILED, **_AUTH},
    )
    async def pause(body: PauseRequest, service: Service) -> Response:
        return await _step(service.engine.weights.pause(body.mode, timeout_s=body.timeout_s))

    @routes.post(
        "/v1/weights/update",
        summary="Set the weights' version on every policy replica, loading a LoRA adapter first if given",
        response_model=StepResponse,
        responses={**_REFUSED, **_FAILED, **_AUTH},
    )
    async def update(body: UpdateRequest, service: Service) -> Response:
        return await _step(service.engine.weights.update(body.version, body.adapter))

    @routes.post(
        "/v1/weights/resume",
        summary="Resume generation on every policy replica; waiting policy calls go on",
        response_model=StepResponse,
        responses=_AUTH,
    )
    async def resume(service: Service) -> Response:
        return await _step(service.engine.weights.resume())

    @routes.get("/v1/weights", summary="The current version, the pause, and each policy replica")
    async def weights(service: Service) -> WeightsResponse:
        return WeightsResponse(**(await service.engine.weights.info()).to_dict())

    return routes


async def _step(step: Any) -> Response:
    """The step's report, or its error as `{"detail": ...}` with the status it calls for."""
    try:
        report = await step
    except WeightUpdateRefused as exc:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)
    except WeightSyncFailed as exc:
        return JSONResponse({"detail": str(exc)}, status_code=502)
    except UsageError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    return JSONResponse(report.to_dict())
