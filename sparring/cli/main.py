"""The `sparring` command: thin parsers over the library; each command imports what it needs when it runs.

Exit codes: 0 done; 1 something failed on the way (an episode aborted, a row could not be scored);
2 a usage or input error (a flag, a path, a task line: the message says what to fix); an unexpected
error keeps its traceback and exits 1; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from sparring.cli import (
    collect,
    env_serve,
    export,
    fake_model,
    gateway,
    graph,
    models,
    run,
    serve,
    show,
    tasks,
    verify,
)
from sparring.core.errors import InputError, UsageError


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sparring", description="Multi-turn RL rollouts on one LangGraph graph, with exact token data."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (run, graph, show, collect, export, models, fake_model, serve, gateway, env_serve, tasks, verify):
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sparring` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, InputError) as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
