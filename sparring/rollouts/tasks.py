"""Tasks: one row of input each, checked up front so a bad row names its file, line and field.

Two row shapes are accepted: sparring's own (`messages`, `env_seed`, `user_persona`, `limits`) and
NeMo Gym's (`responses_create_params.input` plus `verifier_metadata`), converted to sparring's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class TaskError(ValueError):
    """A task row that cannot be run; the message says where and why."""


class TaskMessage(BaseModel):
    """One opening message, OpenAI chat format."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class TaskLimits(BaseModel):
    """Per-task overrides of the run's limits."""

    model_config = ConfigDict(extra="forbid")
    max_turns: int | None = Field(None, ge=1)
    max_steps_per_turn: int | None = Field(None, ge=1)
    max_user_steps_per_turn: int | None = Field(None, ge=1)
    user_stop_tokens: list[str] | None = None
    user_tool_choice: Literal["auto", "required", "none"] | None = None
    policy_tool_choice: Literal["auto", "required", "none"] | None = None


class Task(BaseModel):
    """sparring's task row."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None
    env: str | None = None
    env_url: str | None = None
    messages: list[TaskMessage] | None = None
    env_seed: dict[str, Any] = Field(default_factory=dict)
    user_persona: str | None = None
    limits: TaskLimits | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


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


def from_nemo_gym(row: dict[str, Any], where: str) -> dict[str, Any]:
    """NeMo Gym's row (Responses-style `input`, `verifier_metadata`) as sparring's task."""
    params = row["responses_create_params"]
    if isinstance(params, dict) and isinstance(params.get("input"), str):  # the Responses API's short form
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
    # The row's own fields stay in metadata, responses_create_params included (its tools, for the remote env).
    metadata = {k: v for k, v in row.items() if k != "verifier_metadata"}
    task = {"messages": messages, "env_seed": row.get("verifier_metadata") or {}, "metadata": metadata}
    if "env_url" in row:  # sparring's own field, for rows of a remote resources server
        task["env_url"] = row["env_url"]
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
