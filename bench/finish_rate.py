"""How many real episodes of an environment reach a natural end, and their mean reward.

    .venv/bin/sparring models up                     # once: the default model on 127.0.0.1:8000
    .venv/bin/python bench/finish_rate.py --env tictactoe --episodes 20 --concurrency 4
    .venv/bin/python bench/finish_rate.py --env support-desk --input tasks.jsonl --episodes 20

Episodes run exactly as `sparring run` would run them (same endpoint and limit flags, same
environment settings), `--concurrency` at a time. Tasks come from `--input` (cycled in order), else
from the environment's own shipped tasks when it has them, else its default opening.

An episode is *finished* when it ended on its own (status `completed`: the environment said done, or
the user said its stop token) and, for games, with a decided game (`env_result.game_result` is not
`incomplete`). Printed: one line per episode, then the finish rate, the mean reward, the stop reasons
and the tool errors per episode (what wasted the turns). `--output FILE` keeps every record for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.core.task import parse_task, read_tasks
from sparring.engine.engine import Engine
from sparring.envs.registry import environment_names
from sparring.envs.support_desk import task_rows

SHIPPED_TASKS: dict[str, Callable[[], list[dict[str, Any]]]] = {"support-desk": task_rows}
"""Environments that ship their own tasks: an episode per task, in order, unless --input says otherwise."""


def finished(record: dict[str, Any]) -> bool:
    """Ended on its own, and (for games) with a decided game."""
    return record["status"] == "completed" and record["env_result"].get("game_result") != "incomplete"


def tool_errors(record: dict[str, Any], actor: str) -> int:
    """Tool calls of `actor` that came back as errors: bad arguments ("Error: ...") or an env error field."""
    history = record["messages"] if actor == "policy" else record["user_messages"]
    return sum(
        1
        for m in history
        if m["role"] == "tool" and (str(m["content"]).startswith("Error") or '"error"' in str(m["content"]))
    )


def load_tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tasks to cycle through: --input, else the environment's shipped tasks, else its default opening."""
    if args.input:
        return [task for _, _, task in read_tasks(args.input)]
    if args.env in SHIPPED_TASKS:
        return [parse_task(row, f"{args.env} shipped task {i}") for i, row in enumerate(SHIPPED_TASKS[args.env]())]
    return [parse_task({}, "default task")]


async def play(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--episodes` episodes, `--concurrency` at a time, each line printed as it finishes."""
    engine = Engine(settings_from_args(args, args.env), env=args.env)
    tasks = load_tasks(args)
    slots = asyncio.Semaphore(args.concurrency)
    output = open(args.output, "ab") if args.output else None  # noqa: SIM115 - kept open across episodes

    async def one(index: int) -> dict[str, Any]:
        task_index = index % len(tasks)
        async with slots:
            record = await engine.play(tasks[task_index], task_index=task_index, repeat_index=index // len(tasks))
        if output:
            output.write(orjson.dumps(record) + b"\n")
            output.flush()
        print(
            f"{index:>3} task {record['task_id'] or task_index!s:>12} {record['status']:>9} "
            f"{record['stop_reason']:>17} reward {record['reward']!s:>5} turns {record['num_turns']:>2} "
            f"{record['env_result'].get('game_result', '')!s:>10} policy errors {tool_errors(record, 'policy'):>2} "
            f"user errors {tool_errors(record, 'user'):>2} {record['timing']['wall_s']:>6.1f} s",
            flush=True,
        )
        return record

    try:
        return list(await asyncio.gather(*(one(i) for i in range(args.episodes))))
    finally:
        await engine.aclose()
        if output:
            output.close()


def summarize(records: list[dict[str, Any]], wall_s: float) -> None:
    """Finish rate, mean reward, stop reasons and tool errors over all episodes."""
    done = sum(finished(r) for r in records)
    scored = [r["reward"] for r in records if r["reward"] is not None]
    print(f"\nfinished: {done}/{len(records)} ({100 * done / len(records):.0f}%)")
    mean = f"{statistics.mean(scored):.3f} over {len(scored)} scored" if scored else "none scored"
    print(f"mean reward: {mean} (aborted episodes are not scored)")
    print("stop reasons: " + _counts(r["stop_reason"] for r in records))
    if any("game_result" in r["env_result"] for r in records):
        print("game results: " + _counts(r["env_result"].get("game_result") for r in records))
    components: dict[str, list[float]] = collections.defaultdict(list)
    for r in records:
        for name, value in r["reward_components"].items():
            components[name].append(value)
    if components:
        print("mean components: " + ", ".join(f"{k} {statistics.mean(v):.2f}" for k, v in components.items()))
    for actor in ("policy", "user"):
        print(f"{actor} tool errors per episode: {statistics.mean(tool_errors(r, actor) for r in records):.2f}")
    print(f"mean turns {statistics.mean(r['num_turns'] for r in records):.1f}; wall {wall_s:.0f} s")


def _counts(values: Any) -> str:
    return ", ".join(f"{value} {count}" for value, count in collections.Counter(values).most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="tictactoe", choices=environment_names())
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--input", metavar="FILE", help="JSONL tasks, cycled in order")
    parser.add_argument("--output", metavar="FILE", help="append every rollout record to this JSONL file")
    add_episode_options(parser)
    args = parser.parse_args()
    if args.input and not Path(args.input).is_file():
        sys.exit(f"--input: no such file {args.input}")
    started = time.perf_counter()
    try:
        records = asyncio.run(play(args))
    except UsageError as exc:  # no model server, a flag outside its rule: say which, as `sparring run` does
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    summarize(records, time.perf_counter() - started)


if __name__ == "__main__":
    main()
