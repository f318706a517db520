"""`sparring verify`: re-score finished conversations with our verifier, row by row.

Rows are NeMo Gym rollouts (the task row's own fields plus `response.output`, and usually their
`reward`) or sparring records (with `--tasks FILE`, matched by `task_index`, since a record keeps the
conversation but not the task's seed). The environment is seeded from the task, the policy's tool
calls are replayed in order, and `verify` scores the conversation. Where the row carries a reward
(NeMo Gym's), ours is printed beside it and the summary counts agreement, which is how a team moving
from NeMo Gym checks that our calendar grader agrees with theirs on their own rollouts.

A bad row is reported with its line and the rest go on; nothing is written but the report.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from sparring.envs.base import Environment, close_environment, episode_tools_hook
from sparring.envs.registry import ENVIRONMENTS, get_environment
from sparring.models.wire import from_wire, raw_tool_calls
from sparring.rollouts.tasks import TaskError, parse_task, read_tasks
from sparring.tools.validation import ToolArgumentError, parse_arguments

NEMO_GYM_RESULT_FIELDS = ("response", "reward", "mask_sample", "failure_kind", "failure_reason", "reward_components")


class RowError(ValueError):
    """A row that cannot be re-scored; the message names the line and the field."""


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `verify`; its handler is `args.func(args) -> int`."""
    parser = subparsers.add_parser(
        "verify",
        help="re-score finished conversations (NeMo Gym rollouts or sparring records) with our verifier",
        description="Score each row with the environment's verifier and print reward and components per row, "
        "then a summary; rows that carry their own reward (NeMo Gym rollouts) are compared with ours.",
    )
    parser.add_argument("--env", required=True, choices=sorted(ENVIRONMENTS))
    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL of NeMo Gym rollouts or sparring records")
    parser.add_argument("--tasks", metavar="FILE", help="the tasks sparring records were run from (by task_index)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row, in input order; no summary")
    parser.add_argument("--env-url", metavar="URL", help="resources server, for --env remote")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """0 when every row was scored, 1 when some could not be (each says why), 2 when the input cannot be read."""
    try:
        tasks = {index: task for index, _, task in read_tasks(args.tasks)} if args.tasks else None
        with open(args.input, "rb") as handle:
            lines = handle.readlines()
    except (OSError, TaskError) as exc:
        print(f"sparring verify: {exc}", file=sys.stderr)
        return 2
    results = asyncio.run(rescore_lines(args.env, args.input, lines, tasks, args.env_url))
    for result in results:
        print(orjson.dumps(result).decode() if args.json else _line(result))
    if not args.json:
        print(summary(results))
    return 1 if any("error" in r for r in results) else 0


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
                results.append({"line": line_no, **await rescore_row(env, _load(line, where), where, tasks, env_url)})
            except (RowError, TaskError) as exc:
                results.append({"line": line_no, "error": str(exc)})
            except Exception as exc:  # the environment failed on this row: report it, keep going
                results.append({"line": line_no, "error": f"{where}: {type(exc).__name__}: {exc}"})
    finally:
        await close_environment(env)
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
    state = await replay(env, await env.seed(task), messages)
    verdict = await env.verify(state, messages)
    result: dict[str, Any] = {"id": row_id, "reward": verdict.reward, "components": verdict.components}
    if "reason" in verdict.result:
        result["reason"] = verdict.result["reason"]
    if isinstance(reference, int | float) and not isinstance(reference, bool):
        result["reference_reward"] = reference
        result["agrees"] = float(reference) == verdict.reward
    return result


async def replay(env: Environment, state: Any, messages: Sequence[BaseMessage]) -> Any:
    """The environment state after the policy's tool calls, run again in order (bad calls change nothing)."""
    specs = {t.name: t for t in _tools(env, state)}
    for message in messages:
        if not isinstance(message, AIMessage):
            continue
        for call in raw_tool_calls(message):
            spec = specs.get(call["function"]["name"])
            if spec is None:
                continue
            try:
                arguments = parse_arguments(spec, call["function"]["arguments"])
            except ToolArgumentError:
                continue
            state = (await env.call_tool(state, "policy", spec.name, arguments)).state
    return state


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


def _line(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"line {result['line']}: ERROR {result['error']}"
    components = " ".join(f"{k}={v:g}" for k, v in result["components"].items())
    text = f"line {result['line']}: reward {result['reward']:g}  {components}"
    if "reason" in result:
        text += f"  ({result['reason']})"
    if "reference_reward" in result:
        text += f"  row's reward {result['reference_reward']:g}: {'agrees' if result['agrees'] else 'DIFFERS'}"
    return text


def _load(line: bytes, where: str) -> dict[str, Any]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RowError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise RowError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return row


def _first_text(content: Any) -> str:
    """A message's text as NeMo Gym reads it: a plain string, or the first content part's text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("text") or "")
    return ""


def _tools(env: Environment, state: Any) -> Sequence[Any]:
    hook = episode_tools_hook(env)
    return hook(state, "policy") if hook else env.tools("policy")
