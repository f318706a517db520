"""`sparring run`: play one episode with a live transcript; `--json` prints the rollout record last."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.envs.registry import environment_names


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `sparring run`."""
    run = subparsers.add_parser("run", help="play one episode and print its transcript and reward")
    run.add_argument("--env", default="tictactoe", choices=environment_names())
    run.add_argument("--task", metavar="JSON", help="the task row as JSON")
    run.add_argument("--input", metavar="FILE", help="a JSONL file of tasks")
    run.add_argument("--index", type=int, default=0, help="which task of --input (0-based)")
    run.add_argument("--output", metavar="FILE", help="append the rollout record to this JSONL file")
    run.add_argument("--json", action="store_true", help="print the rollout record as the last line of stdout")
    run.add_argument("--quiet", action="store_true", help="no transcript")
    add_episode_options(run)
    run.set_defaults(func=cmd_run)


def load_task(args: argparse.Namespace) -> dict[str, Any]:
    """The task from --task JSON, --input FILE --index N, or the environment's default opening."""
    import orjson

    from sparring.core.task import parse_task, task_at

    if args.task and args.input:
        raise UsageError("pass either --task or --input, not both")
    if args.task:
        try:
            row = orjson.loads(args.task)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"--task: not valid JSON ({exc})") from None
        return parse_task(row, "--task")
    if args.input:
        if not Path(args.input).is_file():
            raise UsageError(f"--input: no such file {args.input}")
        return task_at(args.input, args.index)
    return parse_task({}, "default task")


def cmd_run(args: argparse.Namespace) -> int:
    """0 when the episode ended (completed or truncated), 1 when it aborted; the record is printed either way."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import orjson

    from sparring.engine.engine import Engine
    from sparring.engine.gc_tuning import tune_gc_for_rollouts
    from sparring.engine.output import OutputLock, check_output_path
    from sparring.views.transcript import print_update

    task = load_task(args)
    env = task.get("env") or args.env
    settings = settings_from_args(args, env)
    with contextlib.ExitStack() as held:
        if args.output:  # checked and locked before the episode: an OS error never costs a played episode
            held.enter_context(OutputLock(check_output_path(args.output, "--output"), "--output"))
        engine = Engine(settings, env=env)
        tune_gc_for_rollouts()
        try:
            record = await engine.play(
                task,
                env=env,
                task_index=args.index if args.input else None,
                on_update=None if args.quiet else print_update,
            )
        finally:
            await engine.aclose()
        line = orjson.dumps(record)
        if args.output:
            with open(args.output, "ab") as handle:
                handle.write(line + b"\n")
    if not args.quiet:
        print(
            f"status {record['status']} ({record['stop_reason']}), reward {record['reward']}, "
            f"{record['num_turns']} turns, {record['num_policy_calls']} policy calls, "
            f"{record['num_user_calls']} user calls, {record['timing']['wall_s']:.2f} s",
            flush=True,
        )
    if record["error"]:  # also with --quiet: an error is never silent
        print(
            f"sparring run: {record['status']} ({record['stop_reason']}): "
            f"{record['error']['type']}: {record['error']['message']}",
            file=sys.stderr,
            flush=True,
        )
    if args.json:
        sys.stdout.buffer.write(line + b"\n")
    return 0 if record["status"] != "aborted" else 1
