"""`verify`: re-score finished conversations with our verifier, row by row.

Rows are NeMo Gym rollouts (the task row's own fields plus `response.output`, and usually their
`reward`) or sparring records (with `--tasks FILE`, matched by `task_index`, since a record keeps the
conversation but not the task's seed). The environment is seeded from the task, the policy's tool
calls are replayed in order, and `verify` scores the conversation. Where the row carries a reward
(NeMo Gym's), ours is printed beside it and the summary counts agreement, which is how a team moving
from NeMo Gym checks that our calendar grader agrees with theirs on their own rollouts.

A bad row is reported with its line and the rest go on; nothing is written but the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from sparring.core.errors import InputError
from sparring.core.jsonl import json_object
from sparring.core.messages import from_wire
from sparring.core.task import parse_task, read_tasks
from sparring.engine.replay import score
from sparring.envs.base import Environment
from sparring.envs.registry import get_environment

NEMO_GYM_RESULT_FIELDS = ("response", "reward", "mask_sample", "failure_kind", "failure_reason", "reward_components")


class RowError(InputError):
    """A row that cannot be re-scored; the message names the line and the field."""


async def verify(
    input: str | Path, *, env: str, tasks: str | Path | None = None, env_url: str | None = None
) -> list[dict[str, Any]]:
    """Re-score every row of a JSONL file (NeMo Gym rollouts, or sparring records with the `tasks` they ran).

    One result per non-blank line, in order: `{line, id, reward, components, ...}` (with the row's own
    reward and whether ours agrees, when it has one), or `{line, error}` naming the line and field. A
    file that cannot be read at all is an error (OSError; TaskError for a bad tasks file).
    """
    task_by_index = {index: task for index, _, task in read_tasks(tasks)} if tasks else None
    with open(input, "rb") as handle:
        lines = handle.readlines()
    return await rescore_lines(env, str(input), lines, task_by_index, env_url)


async def rescore_lines(
    env_name: str, path: str, lines: Sequence[bytes], tasks: dict[int, dict[str, Any]] | None, env_url: str | None
) -> list[dict[str, Any]]:
    """One result per non-blank line, in order: reward and components, or the error."""
    env = get_environment(env_name)
    results = []
    try:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json_object(line, where, "a row", RowError)
                results.append({"line": line_no, **await rescore_row(env, row, where, tasks, env_url)})
            except InputError as exc:
                results.append({"line": line_no, "error": str(exc)})
            except Exception as exc:  # the environment failed on this row: report it, keep going
                results.append({"line": line_no, "error": f"{where}: {type(exc).__name__}: {exc}"})
    finally:
        await env.aclose()
    return results


async def rescore_row(
    env: Environment, row: dict[str, Any], where: str, tasks: dict[int, dict[str, Any]] | None, env_url: str | None
) -> dict[str, Any]:
    """Seed from the row's task, replay the policy's tool calls, verify; the row's own reward rides along."""
    if isinstance(row.get("response"), dict):
        task = parse_task({k: v for k, v in row.items() if k not in NEMO_GYM_RESULT_FIELDS}, where)
        messages = [from_wire(m) for m in task.get("messages") or ()] + response_messages(row["response"], where)
        row_id, reference = row.get("id", task.get("metadata", {}).get("id")), row.get("reward")
    elif isinstance(row.get("messages"), list) and "status" in row:
        if tasks is None:
            raise RowError(f"{where}: a sparring record keeps no task seed; pass --tasks FILE (the tasks it ran)")
        if row.get("task_index") not in tasks:
            raise RowError(f"{where}: field task_index: {row.get('task_index')!r} is not a task in --tasks")
        task = tasks[row["task_index"]]
        messages = [from_wire({k: v for k, v in m.items() if k != "actor"}) for m in row["messages"]]
        row_id, reference = row.get("id"), None
    else:
        raise RowError(
            f"{where}: expected a NeMo Gym rollout (response.output) or a sparring record (messages, status)"
        )
    if env_url and not task.get("env_url"):
        task = {**task, "env_url": env_url}
    verdict = await score(env, task, messages)
    result: dict[str, Any] = {"id": row_id, "reward": verdict.reward, "components": verdict.components}
    if "reason" in verdict.result:
        result["reason"] = verdict.result["reason"]
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        result["reference_reward"] = reference
        result["agrees"] = float(reference) == verdict.reward
    return result


def response_messages(response: dict[str, Any], where: str) -> list[BaseMessage]:
    """NeMo Gym's `response.output`, one message per item, in order (reasoning items become empty replies,
    so a rollout that ended thinking is graded on nothing, as NeMo Gym grades it)."""
    output = response.get("output")
    if not isinstance(output, list):
        raise RowError(f"{where}: field response.output: must be a list of output items")
    messages: list[BaseMessage] = []
    for i, item in enumerate(output):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message" or (kind is None and isinstance(item, dict) and "role" in item):
            text = _first_text(item.get("content"))
            messages.append(HumanMessage(content=text) if item.get("role") == "user" else AIMessage(content=text))
        elif kind == "function_call":
            call = {"id": item.get("call_id", f"call_{i}"), "type": "function"}
            call["function"] = {"name": item.get("name", ""), "arguments": item.get("arguments", "")}
            messages.append(AIMessage(content="", additional_kwargs={"tool_calls": [call]}))
        elif kind == "function_call_output":
            messages.append(ToolMessage(content=str(item.get("output", "")), tool_call_id=item.get("call_id", "")))
        elif kind == "reasoning":
            messages.append(AIMessage(content=""))
        else:
            raise RowError(f"{where}: field response.output.{i}: unknown output item {str(item)[:80]}")
    return messages or [AIMessage(content="")]  # an empty response answered nothing


def summary(results: Sequence[dict[str, Any]]) -> str:
    """Rows scored, mean reward, full marks, agreement with the rows' own rewards, failures."""
    scored = [r for r in results if "error" not in r]
    parts = [f"{len(scored)} of {len(results)} rows scored"]
    if scored:
        mean = sum(r["reward"] for r in scored) / len(scored)
        parts.append(f"mean reward {mean:.3f}, reward 1 on {sum(r['reward'] == 1.0 for r in scored)}")
    compared = [r for r in scored if "agrees" in r]
    if compared:
        parts.append(f"agrees with the rows' own reward on {sum(r['agrees'] for r in compared)} of {len(compared)}")
    failed = len(results) - len(scored)
    if failed:
        parts.append(f"{failed} rows could not be scored (see above)")
    return "; ".join(parts)


def format_result(result: dict[str, Any]) -> str:
    """One result as the report prints it."""
    if "error" in result:
        return f"line {result['line']}: ERROR {result['error']}"
    components = " ".join(f"{k}={v:g}" for k, v in result["components"].items())
    text = f"line {result['line']}: reward {result['reward']:g}  {components}"
    if "reason" in result:
        text += f"  ({result['reason']})"
    if "reference_reward" in result:
        text += f"  row's reward {result['reference_reward']:g}: {'agrees' if result['agrees'] else 'DIFFERS'}"
    return text


def _first_text(content: Any) -> str:
    """A message's text as NeMo Gym reads it: a plain string, or the first content part's text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("text") or "")
    return ""
