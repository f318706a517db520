"""`sparring verify`: the verify library (`sparring.engine.verify`) behind flags."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from sparring.envs.registry import environment_names


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `sparring verify`."""
    parser = subparsers.add_parser(
        "verify",
        help="re-score finished conversations (NeMo Gym rollouts or sparring records) with our verifier",
        description="Score each row with the environment's verifier and print reward and components per row, "
        "then a summary; rows that carry their own reward (NeMo Gym rollouts) are compared with ours.",
    )
    parser.add_argument("--env", required=True, choices=environment_names())
    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL of NeMo Gym rollouts or sparring records")
    parser.add_argument("--tasks", metavar="FILE", help="the tasks sparring records were run from (by task_index)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row, in input order; no summary")
    parser.add_argument("--env-url", metavar="URL", help="resources server, for --env remote")
    parser.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """0 when every row was scored, 1 when some could not be (each says why), 2 when the input cannot be read."""
    import orjson

    from sparring.core.task import TaskError
    from sparring.engine.verify import format_result, summary, verify

    try:
        results = asyncio.run(verify(args.input, env=args.env, tasks=args.tasks, env_url=args.env_url))
    except (OSError, TaskError) as exc:
        print(f"sparring verify: {exc}", file=sys.stderr)
        return 2
    for result in results:
        print(orjson.dumps(result).decode() if args.json else format_result(result))
    if not args.json:
        print(summary(results))
    return 1 if any("error" in r for r in results) else 0
