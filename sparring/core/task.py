"""The one task model: a row of input, checked so a bad row names its file, line and field.

Two row shapes are accepted: sparring's own (`messages`, `env_seed`, `user_persona`, `limits`, ...)
and NeMo Gym's (`responses_create_params.input` plus `verifier_metadata`), which `from_nemo_gym`
turns into sparring's, honouring every field the row carries (the environment, the user persona,
the policy's sampling, the remote environment's URL and tools) the same way on every face. The
episode's `seed` node checks the task again, so every face (Studio included) refuses the same rows
with the same words; files are also checked up front, to name the line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sparring.core.errors import TaskError
from sparring.core.settings import RULES, ToolChoice


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskFunction(_Strict):
    """The function an opening's assistant message called: its name and raw JSON arguments."""

    name: str
    arguments: str = ""


class TaskToolCall(_Strict):
    """One tool call of an opening's assistant message, OpenAI chat format."""

    id: str
    type: Literal["function"] = "function"
    function: TaskFunction


class TaskMessage(_Strict):
    """One opening message, OpenAI chat format."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[TaskToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class TaskLimits(_Strict):
    """Per-task overrides of the run's limits, checked by the settings' own rules (core/settings.py)."""

    max_turns: int | None = Field(None, **RULES["max_turns"].field_constraints())
    max_steps_per_turn: int | None = Field(None, **RULES["max_steps_per_turn"].field_constraints())
    max_user_steps_per_turn: int | None = Field(None, **RULES["max_user_steps_per_turn"].field_constraints())
    user_stop_tokens: list[str] | None = None
    user_tool_choice: ToolChoice | None = None
    policy_tool_choice: ToolChoice | None = None


class TaskSampling(_Strict):
    """Per-task sampling of the policy (a NeMo Gym row's temperature, top_p, max_output_tokens)."""

    temperature: float | None = Field(None, **RULES["policy_temperature"].field_constraints())
    top_p: float | None = Field(None, **RULES["policy_top_p"].field_constraints())
    max_tokens: int | None = Field(None, **RULES["policy_max_tokens"].field_constraints())


class Task(_Strict):
    """sparring's task row; every field is optional."""

    id: str | int | None = Field(None, description="Your id for the task, copied into the record as task_id.")
    env: str | None = Field(None, description="Environment name; default: the run's environment.")
    env_url: str | None = Field(None, description="Resources server of the 'remote' or 'openenv' environment.")
    messages: list[TaskMessage] | None = Field(
        None, description="The opening, OpenAI chat messages; default: the environment's own opening."
    )
    env_seed: dict[str, Any] = Field(
        default_factory=dict,
        description='Environment seed, e.g. {"initial_moves": [{"position": 4, "mark": "X"}]}.',
    )
    user_persona: str | None = Field(
        None, description="System prompt of the simulated user; default: the environment's."
    )
    limits: TaskLimits | None = Field(None, description='Overrides of the run\'s limits, e.g. {"max_turns": 2}.')
    sampling: TaskSampling | None = Field(
        None, description='The policy\'s sampling for this task, e.g. {"temperature": 0.6}.'
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Anything else; kept, never read by the graph.")

    @field_validator("env_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        problem = RULES["env_url"].problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def parse_task(row: Any, where: str = "task") -> dict[str, Any]:
    """A validated task as a plain dict (what graph state holds), or TaskError naming the field."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: a task must be a JSON object, got {type(row).__name__}")
    if "responses_create_params" in row:
        row = from_nemo_gym(row, where)
    try:
        task = Task.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(row)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TaskError(f"{where}: field {field}: {first['msg']}{more}") from None
    return task.model_dump(exclude_none=True)


# NeMo Gym row fields read into the task itself; every other field stays in the task's metadata.
NEMO_GYM_FIELDS = ("verifier_metadata", "env", "env_url", "user_model_system_prompt")
_NEMO_GYM_SAMPLING = (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens"))


def from_nemo_gym(row: dict[str, Any], where: str) -> dict[str, Any]:
    """NeMo Gym's row as sparring's task, every field honoured.

    `responses_create_params.input` becomes the opening (a string is the Responses API's short form),
    `verifier_metadata` the environment's seed, its temperature / top_p / max_output_tokens the
    policy's sampling, `user_model_system_prompt` the user's persona, `env` and `env_url` (sparring's
    own additions) the environment. Everything else, `responses_create_params` included (the remote
    environment reads its `tools`), is kept as metadata.
    """
    params = row["responses_create_params"]
    if isinstance(params, dict) and isinstance(params.get("input"), str):
        params = {**params, "input": [{"role": "user", "content": params["input"]}]}
    if not isinstance(params, dict) or not isinstance(params.get("input"), list):
        raise TaskError(f"{where}: field responses_create_params.input: must be a string or a list of messages")
    messages = []
    for i, item in enumerate(params["input"]):
        if not isinstance(item, dict) or "role" not in item:
            raise TaskError(f"{where}: field responses_create_params.input.{i}: must be a message with a role")
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        messages.append({"role": item["role"], "content": content})
    task: dict[str, Any] = {
        "messages": messages,
        "env_seed": row.get("verifier_metadata") or {},
        "metadata": {k: v for k, v in row.items() if k not in NEMO_GYM_FIELDS},
    }
    for name in ("env", "env_url"):
        if row.get(name) is not None:
            task[name] = row[name]
    if row.get("user_model_system_prompt"):
        task["user_persona"] = row["user_model_system_prompt"]
    sampling = {ours: params[theirs] for theirs, ours in _NEMO_GYM_SAMPLING if params.get(theirs) is not None}
    if sampling:
        task["sampling"] = sampling
    return task


def read_tasks(path: str | Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(task index, line number, task) for every non-blank line of a JSONL file; bad rows raise TaskError."""
    for index, line_no, task in scan_tasks(path):
        if isinstance(task, TaskError):
            raise task
        yield index, line_no, task


def scan_tasks(path: str | Path) -> Iterator[tuple[int, int, dict[str, Any] | TaskError]]:
    """Like `read_tasks`, but a bad row comes back as its TaskError and the scan goes on.

    Every non-blank line has a task index, bad ones included, so indices never shift when a row is fixed.
    """
    index = 0
    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                yield index, line_no, parse_task(orjson.loads(line), where)
            except orjson.JSONDecodeError as exc:
                yield index, line_no, TaskError(f"{where}: not valid JSON ({exc})")
            except TaskError as exc:
                yield index, line_no, exc
            index += 1


def task_at(path: str | Path, index: int) -> dict[str, Any]:
    """The task with this index (0-based, blank lines skipped) in a JSONL file."""
    for task_index, _, task in read_tasks(path):
        if task_index == index:
            return task
    raise TaskError(f"{path}: has no task with index {index}")


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its `$defs` written in place (the task model has no recursion), to embed elsewhere."""
    definitions = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


TASK_JSON_SCHEMA = _inline_refs(Task.model_json_schema())
"""The task model's JSON schema, self-contained: Studio's input form and the HTTP schemas show it."""
