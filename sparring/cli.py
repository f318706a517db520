"""The `sparring` command: a thin face over the one graph builder."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from sparring.envs import commands as task_commands
from sparring.envs.registry import ENVIRONMENTS, get_environment
from sparring.gateway import commands as gateway_commands
from sparring.graphs import commands as graph_commands
from sparring.graphs.episode import build_graph
from sparring.models import commands as model_commands
from sparring.nodes.deps import EpisodeDeps
from sparring.options import UsageError, add_episode_options, episode_config
from sparring.rollouts import collect, export, rescore, show
from sparring.rollouts.gc_tuning import tune_gc_for_rollouts
from sparring.rollouts.runner import run_episode
from sparring.rollouts.tasks import TaskError, parse_task, task_at
from sparring.rollouts.transcript import print_update
from sparring.server import commands as serve_commands
from sparring.testing import commands as fake_model_commands


def load_task(args: argparse.Namespace) -> dict[str, Any]:
    """The task from --task JSON, --input FILE --index N, or the environment's default opening."""
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


async def _run(args: argparse.Namespace) -> int:
    task = load_task(args)
    env_name = task.get("env") or args.env
    config = episode_config(args, env_name)
    env = get_environment(env_name)
    deps = EpisodeDeps(env)
    graph = build_graph(env, deps)
    try:
        record = await run_episode(
            graph,
            task,
            config,
            env=env_name,
            task_index=args.index if args.input else None,
            on_update=None if args.quiet else lambda node, update: print_update(node, update),
        )
    finally:
        await deps.aclose()
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


def cmd_run(args: argparse.Namespace) -> int:
    """Play one episode with a live transcript; `--json` prints the rollout record last."""
    return asyncio.run(_run(args))


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="sparring", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="play one episode and print its transcript and reward")
    run.add_argument("--env", default="tictactoe", choices=sorted(ENVIRONMENTS))
    run.add_argument("--task", metavar="JSON", help="the task row as JSON")
    run.add_argument("--input", metavar="FILE", help="a JSONL file of tasks")
    run.add_argument("--index", type=int, default=0, help="which task of --input (0-based)")
    run.add_argument("--output", metavar="FILE", help="append the rollout record to this JSONL file")
    run.add_argument("--json", action="store_true", help="print the rollout record as the last line of stdout")
    run.add_argument("--quiet", action="store_true", help="no transcript")
    add_episode_options(run)
    run.set_defaults(func=cmd_run)

    graph_commands.register(sub)
    show.register(sub)
    collect.register(sub)
    export.register(sub)
    model_commands.register(sub)
    fake_model_commands.register(sub)
    serve_commands.register(sub)
    gateway_commands.register(sub)
    task_commands.register(sub)
    rescore.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sparring` console script."""
    args = make_parser().parse_args(argv)
    tune_gc_for_rollouts()  # every face started here runs episodes: collect less, never the start-up objects
    try:
        return args.func(args)
    except (UsageError, TaskError, ValueError) as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
