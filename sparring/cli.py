"""The `sparring` command: a thin face over the one graph builder."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from sparring.envs.registry import ENVIRONMENTS, get_environment
from sparring.graphs.context import EpisodeConfig
from sparring.graphs.episode import build_graph
from sparring.models import commands as model_commands
from sparring.nodes.deps import EpisodeDeps
from sparring.rollouts.runner import run_episode
from sparring.rollouts.tasks import TaskError, parse_task, task_at
from sparring.rollouts.transcript import print_update
from sparring.testing import commands as fake_model_commands


class UsageError(Exception):
    """A command line that cannot run; the message says what to pass instead."""


def add_episode_options(parser: argparse.ArgumentParser) -> None:
    """Endpoint and limit flags shared by every command that runs episodes."""
    endpoints = parser.add_argument_group("model endpoints (default: $SPARRING_* variables, then `sparring models up`)")
    for role in ("policy", "user"):
        endpoints.add_argument(
            f"--{role}-base-url",
            action="append",
            metavar="URL",
            help=f"OpenAI-compatible base URL of the {role} model (repeat for replicas)",
        )
        endpoints.add_argument(f"--{role}-model", metavar="NAME", help=f"model name of the {role} server")
        endpoints.add_argument(f"--{role}-api-key", metavar="KEY", help=f"bearer token for the {role} server")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-turns", type=int)
    limits.add_argument("--max-steps-per-turn", type=int)
    limits.add_argument("--max-user-steps-per-turn", type=int)
    limits.add_argument(
        "--user-stop-token",
        action="append",
        metavar="TOKEN",
        help="exact string that ends the episode (repeatable; default ###STOP###)",
    )
    limits.add_argument("--user-tool-choice", choices=["auto", "required", "none"])
    limits.add_argument("--policy-tool-choice", choices=["auto", "required", "none"])
    limits.add_argument("--policy-max-tokens", type=int)
    limits.add_argument("--timeout", type=float, dest="request_timeout_s", help="seconds per model call")
    limits.add_argument(
        "--token-mode",
        choices=["auto", "chat", "tito"],
        help="tito: exact token-in-token-out (needs the policy tokenizer); default auto",
    )
    limits.add_argument(
        "--policy-tokenizer",
        metavar="DIR",
        help="the policy model's local folder (tokenizer + chat template), for tito",
    )


def episode_config(args: argparse.Namespace, env_name: str) -> EpisodeConfig:
    """Settings from flags, then $SPARRING_* variables, then servers started by `sparring models up`."""
    changes: dict[str, Any] = {}
    local = _local_endpoints()
    for role in ("policy", "user"):
        urls = getattr(args, f"{role}_base_url") or _env_list(f"SPARRING_{role.upper()}_BASE_URL")
        model = getattr(args, f"{role}_model") or os.environ.get(f"SPARRING_{role.upper()}_MODEL")
        if not urls and role in local:
            urls, model = [local[role]["base_url"]], model or local[role]["model"]
            if role == "policy" and Path(local[role]["model_path"]).is_dir():
                changes["policy_tokenizer"] = local[role]["model_path"]
        if not urls:
            raise UsageError(
                f"no {role} model server: pass --{role}-base-url URL, set SPARRING_{role.upper()}_BASE_URL, "
                "or start local ones with `sparring models up`"
            )
        changes[f"{role}_base_urls"] = urls
        if model:
            changes[f"{role}_model"] = model
        api_key = getattr(args, f"{role}_api_key") or os.environ.get(f"SPARRING_{role.upper()}_API_KEY")
        if api_key:
            changes[f"{role}_api_key"] = api_key
    for name in (
        "max_turns",
        "max_steps_per_turn",
        "max_user_steps_per_turn",
        "user_tool_choice",
        "policy_tool_choice",
        "policy_max_tokens",
        "request_timeout_s",
        "token_mode",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if args.policy_tokenizer:
        changes["policy_tokenizer"] = args.policy_tokenizer
    if args.user_stop_token:
        changes["user_stop_tokens"] = args.user_stop_token
    return replace(default_config(env_name), **changes)


def default_config(env_name: str) -> EpisodeConfig:
    """The settings an environment is meant to be played with (flags and variables override them)."""
    return replace(EpisodeConfig(), **get_environment(env_name).settings)


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [part.strip() for part in value.split(",") if part.strip()]


def _local_endpoints() -> dict[str, Any]:
    from sparring.models.local import local_endpoints

    return local_endpoints()


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
        await deps.clients.aclose()
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
        if record["error"]:
            print(f"error: {record['error']['type']}: {record['error']['message']}", flush=True)
    if args.json:
        sys.stdout.buffer.write(line + b"\n")
    return 0 if record["status"] != "aborted" else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Play one episode with a live transcript; `--json` prints the rollout record last."""
    return asyncio.run(_run(args))


def cmd_graph(args: argparse.Namespace) -> int:
    """Print the compiled graph as Mermaid text (the same graph every face runs)."""
    print(build_graph(get_environment(args.env)).get_graph().draw_mermaid())
    return 0


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

    graph = sub.add_parser("graph", help="print the episode graph as Mermaid")
    graph.add_argument("--env", default="tictactoe", choices=sorted(ENVIRONMENTS))
    graph.set_defaults(func=cmd_graph)

    model_commands.register(sub)
    fake_model_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sparring` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, TaskError, ValueError) as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
