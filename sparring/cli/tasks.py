"""`sparring tasks ENV`: seeded task generators, one JSON task per line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def _calendar(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sparring.envs.calendar.generator import generate_tasks as calendar_tasks

    return calendar_tasks(args.n, args.seed, min_events=args.min_events, max_events=args.max_events, tools=args.tools)


GENERATORS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {"calendar": _calendar}


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `tasks`; its handler is `args.func(args) -> int`."""
    parser = subparsers.add_parser(
        "tasks",
        help="write seeded tasks for an environment (JSONL)",
        description="Write N tasks for an environment, the same ones for the same seed. Calendar tasks carry "
        "the user's requests, the expected calendar (NeMo Gym's exp_cal_state) and a known feasible solution.",
    )
    parser.add_argument("env", choices=sorted(GENERATORS))
    parser.add_argument("--n", type=int, default=100, help="how many tasks (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    calendar = parser.add_argument_group("calendar")
    calendar.add_argument("--min-events", type=int, default=3, help="fewest events per task (default: %(default)s)")
    calendar.add_argument("--max-events", type=int, default=5, help="most events per task (default: %(default)s)")
    calendar.add_argument("--tools", action="store_true", help="the tools form: the policy edits the calendar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Generate and write; a bad count or range is a usage error (exit 2)."""
    if args.n < 0:
        print("sparring tasks: --n must be 0 or more", file=sys.stderr)
        return 2
    try:
        tasks = GENERATORS[args.env](args)
    except ValueError as exc:
        print(f"sparring tasks: {exc}", file=sys.stderr)
        return 2
    import orjson

    lines = b"".join(orjson.dumps(task) + b"\n" for task in tasks)
    if args.output:
        with open(args.output, "wb") as handle:
            handle.write(lines)
        print(f"wrote {len(tasks)} {args.env} tasks (seed {args.seed}) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(lines)
    return 0
