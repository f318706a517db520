"""Request and response models of the rollout service, built with this server's bounds.

The bounds (max repeats, batch size, turns, tokens) are part of the models, so the OpenAPI schema
states them and a request over one gets FastAPI's 422 naming the field and the limit. A number JSON
cannot carry (NaN, Infinity, 1e400) never reaches a model: `sparring.web.body.JSONRoute` refuses it
with a 422 naming its field, wherever in the body it is. Environment
names are an enum of the registry's names at start-up, so an unknown one is named in the 422 too.
Records travel as plain JSON (orjson) and are described, not re-validated, on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model

from sparring.core.task import Task, TaskLimits
from sparring.server.settings import ServerSettings

ToolChoice: TypeAlias = Literal["auto", "required", "none"]

TASK_EXAMPLE: dict[str, Any] = {
    "id": "center-opening",
    "env_seed": {"initial_moves": [{"position": 4, "mark": "O"}]},
    "limits": {"max_turns": 4},
}

NEMO_GYM_ROW_EXAMPLE: dict[str, Any] = {
    "responses_create_params": {
        "input": [
            {"role": "developer", "content": "You are X in tic-tac-toe. Call make_move with a position 0-8."},
            {"role": "user", "content": "Let's play. The board is empty; your move."},
        ],
        "temperature": 1.0,
    },
    "verifier_metadata": {"initial_moves": []},
    "agent_ref": {"type": "responses_api_agents", "name": "sparring"},
}


class RecordModel(BaseModel):
    """One rollout record, exactly what `sparring run --json` prints (see README, "The rollout record")."""

    model_config = ConfigDict(extra="allow")
    id: str
    task_index: int | None
    repeat_index: int
    task_id: str | int | None
    env: str
    status: Literal["completed", "truncated", "aborted"]
    stop_reason: str | None
    reward: float | None
    reward_components: dict[str, float]
    env_result: dict[str, Any]
    num_turns: int
    num_policy_calls: int
    num_user_calls: int
    messages: list[dict[str, Any]]
    user_messages: list[dict[str, Any]]
    trajectory: dict[str, Any]
    usage: dict[str, dict[str, int]]
    timing: dict[str, float]
    error: dict[str, Any] | None


class RolloutsResponse(BaseModel):
    """The records of one task's episodes, one per repeat, in repeat order."""

    records: list[RecordModel]


class BatchSummary(BaseModel):
    """The last line of a batch stream."""

    episodes: int
    counts: dict[str, int] = Field(description="Episodes by status (completed, truncated, aborted).")
    stop_reasons: dict[str, int]
    mean_reward: float | None = Field(description="Mean over episodes that have a reward (aborted ones have none).")
    wall_s: float


class BatchSummaryLine(BaseModel):
    """The stream's final line: `{"summary": {...}}`."""

    summary: BatchSummary


class EnvInfo(BaseModel):
    """An environment as a client needs to know it."""

    name: str
    tools: dict[str, list[dict[str, Any]]] = Field(description="Tool schemas (OpenAI chat format) per actor.")
    settings: dict[str, Any] = Field(description="The settings its episodes run with on this server.")


class EnvsResponse(BaseModel):
    envs: list[EnvInfo]


class GraphResponse(BaseModel):
    """The episode graph every face runs."""

    env: str
    mermaid: str
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    status: Literal["ready", "not ready"]
    endpoints: dict[str, dict[str, Any]] = Field(description="Per role: its URLs and whether each answered.")


class AggregateMetricsRequest(BaseModel):
    """NeMo Gym's /aggregate_metrics body: verify responses without their `response` and params."""

    verify_responses: list[dict[str, Any]]


class AggregateMetricsResponse(BaseModel):
    """NeMo Gym's AggregateMetrics: per-task and overall `mean/…`, `max/…`, … of every numeric field."""

    group_level_metrics: list[dict[str, Any]] = Field(default_factory=list)
    agent_metrics: dict[str, Any] = Field(default_factory=dict)
    key_metrics: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class RequestModels:
    """The request models of one server (its bounds and environments baked in)."""

    env: Any
    """The environment names as a Literal type (an enum in the schema)."""
    overrides: type[BaseModel]
    rollout: type[BaseModel]
    batch: type[BaseModel]
    run: type[BaseModel]


MAX_STALENESS = 1_000_000
"""A bound on the bound: any real staleness is far below it; a request cannot send a huge integer."""


def build_request_models(settings: ServerSettings, env_names: list[str]) -> RequestModels:
    """Models whose field constraints are this server's limits, so the schema states all a request must meet."""
    env_type: Any = Literal[tuple(sorted(env_names))]  # type: ignore[valid-type]
    # Types made at run time (this Literal, the models made below) have no static type form, so they are
    # `Any` like env_type: pyright sees `model | None` as a UnionType value, which create_model's TypeForm
    # field definitions refuse, and a variable inside `list[...]` as an invalid type expression.
    optional_env: Any = env_type | None
    steps = Field(None, ge=1, le=settings.max_steps_per_turn)
    overrides = create_model(
        "Settings",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        __doc__="Per-request settings within this server's bounds; unset ones keep the server's defaults.",
        max_turns=(int | None, Field(None, ge=1, le=settings.max_turns)),
        max_steps_per_turn=(int | None, steps),
        max_user_steps_per_turn=(int | None, steps),
        user_stop_tokens=(list[str] | None, Field(None, max_length=8)),
        policy_tool_choice=(ToolChoice | None, None),
        user_tool_choice=(ToolChoice | None, None),
        policy_temperature=(float | None, Field(None, ge=0.0, le=2.0)),
        policy_top_p=(float | None, Field(None, gt=0.0, le=1.0)),
        policy_max_tokens=(int | None, Field(None, ge=1, le=settings.max_tokens)),
        user_temperature=(float | None, Field(None, ge=0.0, le=2.0)),
        user_top_p=(float | None, Field(None, gt=0.0, le=1.0)),
        user_max_tokens=(int | None, Field(None, ge=1, le=settings.max_tokens)),
        max_staleness=(
            int | None,
            Field(None, ge=0, le=MAX_STALENESS, description="Weight versions an episode's oldest token may lag."),
        ),
    )
    limits = create_model(
        "TaskLimits",
        __base__=TaskLimits,
        max_turns=(int | None, Field(None, ge=1, le=settings.max_turns)),
        max_steps_per_turn=(int | None, steps),
        max_user_steps_per_turn=(int | None, steps),
    )
    optional_limits: Any = limits | None
    task = create_model(
        "Task",
        __base__=Task,
        __doc__="sparring's task row; every field optional (a task without messages gets the env's opening).",
        env=(optional_env, None),
        limits=(optional_limits, None),
    )
    create_params = create_model(
        "ResponsesCreateParams",
        __base__=NemoGymCreateParams,
        max_output_tokens=(int | None, Field(None, ge=1, le=settings.max_tokens)),
    )
    row = create_model(
        "NeMoGymRow",
        __base__=NemoGymRow,
        env=(optional_env, Field(None, description=f"sparring's environment (default {settings.default_env!r}).")),
        responses_create_params=(create_params, ...),
    )
    any_task: Any = Annotated[
        Annotated[task, Tag("sparring")] | Annotated[row, Tag("nemo_gym")],
        Discriminator(_task_shape),
    ]
    task_list: Any = list[any_task]
    env_field = (
        optional_env,
        Field(None, description=f"Environment name; default {settings.default_env!r} (or the task's own `env`)."),
    )
    optional_overrides: Any = overrides | None
    settings_field = (optional_overrides, Field(None, description="Overrides of limits and sampling."))
    rollout = create_model(
        "RolloutRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"task": TASK_EXAMPLE, "repeats": 2}]}),
        __doc__="One task, played `repeats` times.",
        env=env_field,
        task=(any_task, Field(default_factory=dict, description="sparring's task row, or a NeMo Gym row.")),
        repeats=(int, Field(1, ge=1, le=settings.max_repeats)),
        settings=settings_field,
    )
    batch = create_model(
        "BatchRequest",
        __config__=ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"tasks": [TASK_EXAMPLE, {}], "repeats": 2, "concurrency": 4}]},
        ),
        __doc__="Many tasks, each played `repeats` times; records stream back as NDJSON as episodes finish.",
        env=env_field,
        tasks=(task_list, Field(min_length=1, max_length=settings.max_batch_size)),
        repeats=(int, Field(1, ge=1, le=settings.max_repeats)),
        concurrency=(
            int | None,
            Field(None, ge=1, le=settings.batch_concurrency, description="Episodes of this batch playing at once."),
        ),
        settings=settings_field,
    )
    return RequestModels(env=env_type, overrides=overrides, rollout=rollout, batch=batch, run=row)


def _task_shape(value: Any) -> str:
    """NeMo Gym rows are the ones with `responses_create_params`."""
    if isinstance(value, BaseModel):
        value = value.__dict__
    return "nemo_gym" if isinstance(value, dict) and "responses_create_params" in value else "sparring"


class NemoGymInputMessage(BaseModel):
    """One message of a NeMo Gym row's `input` (Responses API `EasyInputMessage`)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]] | None = None
    type: Literal["message"] = "message"


class NemoGymCreateParams(BaseModel):
    """The fields of NeMo Gym's `responses_create_params` sparring reads; others are accepted and echoed back."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    input: str | list[NemoGymInputMessage]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_output_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool = True
    tool_choice: Any = "auto"


class NemoGymRow(BaseModel):
    """A NeMo Gym row; its other fields (agent_ref, _ng_task_index, ...) reach the environment and come back."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [NEMO_GYM_ROW_EXAMPLE]})
    responses_create_params: NemoGymCreateParams
    verifier_metadata: dict[str, Any] | None = Field(None, description="The environment's seed data.")
    user_model_system_prompt: str | None = Field(None, description="This row's persona for the simulated user.")
