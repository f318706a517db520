"""The `sparring fake-model` subcommand, registered into the main CLI's argparse subparsers."""

from __future__ import annotations

import argparse
from typing import Any

from sparring.testing.fake_model import DESCRIPTION, add_server_arguments, run_server


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `fake-model`; its handler is `args.func(args) -> int`, serving until Ctrl-C."""
    parser = subparsers.add_parser(
        "fake-model",
        help="serve the scripted OpenAI-compatible model server (for tests, demos, benchmarks)",
        description=DESCRIPTION,
    )
    add_server_arguments(parser)
    parser.set_defaults(func=run_server)
    return parser
