"""`sparring export`: the export library (`sparring.engine.export`) behind flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sparring.core.errors import UsageError

DESCRIPTION = """Turn rollout records into training rows: one row per policy segment of each scored episode, with
its exact token_ids, loss_mask and logprobs, the reward, the group and the group advantage
(reward minus the group mean; --normalize std divides by the group's std). Parquet or JSONL by
the output's extension. Aborted episodes are left out and counted, and so are, with
--drop-attributed, the episodes the policy did not make fail (the record's attribution label). Every
record is checked first (equal lengths of token_ids/loss_mask/logprobs, a 0/1 mask, finite logprobs
where it is 1, the fields' types); a bad one stops the export, naming its file, line and field, or with
--on-bad-record skip is left out, reported and counted (exit 1). A failed export writes no file."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `sparring export`."""
    parser = subparsers.add_parser(
        "export",
        help="turn rollout records into training rows (Parquet or JSONL) with per-group advantages",
        description=DESCRIPTION,
    )
    parser.add_argument("records", nargs="?", metavar="RECORDS", help="the same as --input (kept for old scripts)")
    parser.add_argument("--input", metavar="FILE", help="rollout records, JSONL (e.g. the output of collect)")
    parser.add_argument("--output", "-o", required=True, metavar="FILE", help="FILE.parquet or FILE.jsonl")
    parser.add_argument(
        "--normalize", choices=["none", "std"], default="none", help="divide advantages by the group's std"
    )
    parser.add_argument("--drop-equal-groups", action="store_true", help="leave out groups whose rewards are all equal")
    parser.add_argument(
        "--on-bad-record",
        choices=["fail", "skip"],
        default="fail",
        help="a record that cannot be a training row: stop with its file:line and field (default), "
        "or leave it out, report it on stderr and count it (exit 1)",
    )
    parser.add_argument(
        "--drop-attributed",
        metavar="LABELS",
        type=_labels,
        default=(),
        help="leave out episodes whose attribution label is one of these, comma-separated (e.g. user,tool,env: "
        "the failures the policy did not cause), from the rows and the group statistics; counted",
    )
    parser.add_argument(
        "--max-staleness",
        type=int,
        metavar="N",
        help="leave out episodes whose oldest policy token lags by more than N weight versions (ended "
        "aborted/stale, or measured so), from the rows and the group statistics; counted",
    )
    parser.add_argument(
        "--current-version",
        metavar="V",
        help="with --max-staleness: measure staleness against this version (the trainer's now) instead of "
        "the one each episode ended at",
    )
    parser.set_defaults(func=cmd_export)


def _labels(value: str) -> tuple[str, ...]:
    from sparring.core.attribution import LABELS

    labels = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [label for label in labels if label not in LABELS]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown label(s) {', '.join(unknown) or '(none given)'}; the labels: {', '.join(LABELS)}"
        )
    return labels


def input_of(args: argparse.Namespace, flag: str = "--input") -> str:
    """The input file from `--input` or the positional alias (one of them, not both)."""
    if args.records and args.input:
        raise UsageError(f"pass the records file once: {flag} FILE (the positional form is an alias)")
    path = args.input or args.records
    if not path:
        raise UsageError(f"{flag} FILE is required")
    if not Path(path).is_file():
        raise UsageError(f"{flag}: no such file {path}")
    return path


def cmd_export(args: argparse.Namespace) -> int:
    """Export and print the counts (one JSON line on stdout); 1 when bad records were skipped."""
    import orjson

    from sparring.engine.export import export

    stats = export(
        input_of(args),
        args.output,
        normalize=args.normalize,
        drop_equal_groups=args.drop_equal_groups,
        on_bad_record=args.on_bad_record,
        on_skip=lambda problem: print(f"sparring export: skipped {problem}", file=sys.stderr, flush=True),
        drop_attributed=args.drop_attributed,
        max_staleness=args.max_staleness,
        current_version=args.current_version,
    )
    summary = {**stats.__dict__, "groups_by_size": {str(k): v for k, v in sorted(stats.groups_by_size.items())}}
    print(orjson.dumps({"output": str(args.output), **summary}).decode())
    return 1 if stats.bad_records else 0
