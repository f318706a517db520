"""The `sparring graph` subcommand: the episode graph as Mermaid text, or as a picture file."""

from __future__ import annotations

import argparse
from typing import Any

from sparring.core.errors import UsageError
from sparring.envs.registry import environment_names, get_environment
from sparring.graphs.picture import FORMATS, PictureError, picture_format, render


def cmd_graph(args: argparse.Namespace) -> int:
    """Print Mermaid, or write `--out FILE` in the format its extension names."""
    from sparring.graphs.episode import build_graph

    graph = build_graph(get_environment(args.env))
    if not args.out:
        print(graph.get_graph().draw_mermaid(), end="")
        return 0
    try:
        picture_format(args.out)
        render(graph, args.out)
    except PictureError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `graph`; its handler is `args.func(args) -> int`."""
    parser = subparsers.add_parser(
        "graph",
        help="draw the episode graph (Mermaid on stdout, or --out FILE: .svg/.png via graphviz, .dot, .mmd)",
        description="Draw the compiled episode graph, the same one every face runs.",
    )
    parser.add_argument("--env", default="tictactoe", choices=environment_names())
    parser.add_argument(
        "--out",
        metavar="FILE",
        help=f"write a picture; the extension picks the format ({', '.join(sorted(FORMATS))}); "
        "svg and png need graphviz's `dot`",
    )
    parser.set_defaults(func=cmd_graph)
