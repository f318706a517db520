"""`sparring show`: one rollout record as a transcript on the terminal, or as an HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparring.cli.export import input_of


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `sparring show`."""
    parser = subparsers.add_parser(
        "show",
        help="print one rollout record's transcript; --html FILE writes a page with its tokens",
        description="Show one rollout record from a JSONL file (as written by `run --output` or `collect`).",
    )
    parser.add_argument("records", nargs="?", metavar="RECORD_FILE", help="the same as --input (an alias)")
    parser.add_argument("--input", metavar="FILE", help="JSONL file of rollout records")
    parser.add_argument("--index", type=int, default=0, help="which record (0-based; -1 is the last)")
    parser.add_argument("--view", choices=["policy", "user"], default="policy", help="whose history to print")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page of the episode")
    parser.add_argument(
        "--tokenizer",
        metavar="DIR|URL",
        help="the policy model's local folder, or its server's URL (decoded by its /detokenize), to show "
        "token text on the page; without it the page shows token ids",
    )
    parser.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    """Print the transcript; with --html also write the self-contained page."""
    from sparring.views.show import load_record, token_decoder, transcript_lines

    record = load_record(input_of(args), args.index)
    for line in transcript_lines(record, view=args.view):
        print(line)
    if args.html:
        from sparring.views.html import rollout_page

        Path(args.html).write_text(rollout_page(record, token_decoder(args.tokenizer)), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0
