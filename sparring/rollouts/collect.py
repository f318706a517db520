"""`sparring collect`: a JSONL file of tasks in, one rollout record per (task, repeat) out, on the batch runner.

Resume, the failures file and `--retry-failed` follow the rules in `rollouts/output.py`; the metrics
file is `rollouts/metrics.py`'s summary, rewritten (atomically) at most every `METRICS_EVERY_S` and
at the end. The order of work: tasks are read (bad lines reported and counted, never fatal),
optionally shuffled with a seed, cut to `--limit`, expanded into `--repeats` items each (the repeats
of a task stay next to each other, so a group finishes together and shares vLLM's prefix cache),
minus the pairs the output already holds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sparring.envs.registry import ENVIRONMENTS
from sparring.options import UsageError, add_episode_options, episode_config
from sparring.rollouts.batch import BatchItem
from sparring.rollouts.metrics import MetricsAccumulator
from sparring.rollouts.output import (
    PreparedOutput,
    RecordWriter,
    failures_path,
    is_failure,
    metrics_path,
    prepare_output,
    write_json_atomically,
)
from sparring.rollouts.ray_runner import add_ray_options, make_runner
from sparring.rollouts.tasks import TaskError, scan_tasks

METRICS_EVERY_S = 2.0


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `sparring collect` to the CLI."""
    parser = subparsers.add_parser(
        "collect",
        help="run many episodes from a JSONL file of tasks, appending rollout records as they finish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env", default="tictactoe", choices=sorted(ENVIRONMENTS), help="unless a task names one")
    parser.add_argument("--input", required=True, metavar="FILE", help="tasks, JSONL (sparring's or NeMo Gym's rows)")
    parser.add_argument("--output", required=True, metavar="FILE", help="rollout records, JSONL (appended)")
    parser.add_argument("--failures", metavar="FILE", help="aborted episodes (default: OUTPUT.failures.jsonl)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N tasks (after --shuffle)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="episodes per task: a group (GRPO)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N", help="episodes at once (default 8)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the task order (with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue an existing output: skip pairs it holds")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again only the aborted pairs of an existing output"
    )
    parser.add_argument(
        "--grace", type=float, default=0.0, metavar="S", help="on Ctrl-C/SIGTERM, seconds in-flight episodes may finish"
    )
    parser.add_argument(
        "--pass-threshold", type=float, default=1.0, metavar="R", help="reward that counts as a pass in pass@k"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar; errors still go to stderr")
    add_ray_options(parser)
    add_episode_options(parser)
    parser.set_defaults(func=cmd_collect)
    return parser


def cmd_collect(args: argparse.Namespace) -> int:
    """Run the collection; exit 0 when every episode ran, 1 when some aborted or lines were bad, 130 when stopped."""
    return asyncio.run(collect(args))


@dataclass
class Plan:
    """The items to run and what was found on the way."""

    items: list[BatchItem]
    invalid_tasks: int
    tasks: int


def plan_items(args: argparse.Namespace, prepared: PreparedOutput, report: Console) -> Plan:
    """Tasks in, items out (see the module docstring for the order of the steps)."""
    tasks: list[tuple[int, dict[str, Any]]] = []
    invalid = 0
    for task_index, _, task in scan_tasks(args.input):
        if isinstance(task, TaskError):
            invalid += 1
            report.print(f"sparring collect: skipped {task}", markup=False, highlight=False)
            continue
        tasks.append((task_index, task))
    if args.shuffle:
        random.Random(args.seed).shuffle(tasks)
    if args.limit is not None:
        tasks = tasks[: args.limit]
    retry_only = args.retry_failed and not args.resume
    items = [
        BatchItem(task_index, repeat, task, task.get("env") or args.env)
        for task_index, task in tasks
        for repeat in range(args.repeats)
        if (task_index, repeat) not in prepared.done and (not retry_only or (task_index, repeat) in prepared.rerun)
    ]
    return Plan(items, invalid, len(tasks))


async def collect(args: argparse.Namespace) -> int:
    """The command's body: prepare the output, run the items, keep the metrics file current."""
    _check(args)
    report = Console(stderr=True, soft_wrap=True)
    config = episode_config(args, args.env)  # fails early on a missing endpoint
    metrics = MetricsAccumulator(pass_threshold=args.pass_threshold)
    prepared = prepare_output(args.output, retry_failed=args.retry_failed, on_kept=metrics.add)
    _say_prepared(args, prepared, report)
    plan = plan_items(args, prepared, report)
    runner = make_runner(args, lambda name: config if name == args.env else episode_config(args, name))
    writer = RecordWriter(args.output, args.failures)
    started = time.perf_counter()
    ran = failed = 0
    interrupted_by: list[str] = []

    def write_metrics() -> None:
        summary = metrics.summary(
            wall_s=time.perf_counter() - started,
            episodes_this_run=ran,
            latency=runner.latency(),
            replicas=runner.replica_stats(),
            invalid_tasks=plan.invalid_tasks,
        )
        write_json_atomically(metrics_path(args.output), summary)

    def on_signal(name: str) -> None:
        grace = 0.0 if interrupted_by else args.grace  # a second signal ends the grace period
        interrupted_by.append(name)
        report.print(f"sparring collect: {name}: stopping; episodes still running in {grace:g} s end as interrupted")
        runner.stop(grace)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    progress = _progress(report, len(plan.items), args.quiet)
    last_metrics = 0.0
    try:
        with progress:
            task_id = progress.add_task("episodes", total=len(plan.items), stats="")
            async for record in runner.run(plan.items):
                writer.write(record)
                metrics.add(record)
                ran += 1
                if is_failure(record):
                    failed += 1
                    error = record.get("error") or {}
                    progress.console.print(
                        f"sparring collect: task {record['task_index']} repeat {record['repeat_index']} "
                        f"({record['id']}) aborted, {record['stop_reason']}: "
                        f"{error.get('type')}: {error.get('message')}",
                        markup=False,
                        highlight=False,
                    )
                progress.update(task_id, advance=1, stats=_stats_text(metrics))
                if time.perf_counter() - last_metrics >= METRICS_EVERY_S:
                    write_metrics()
                    last_metrics = time.perf_counter()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        writer.close()
        await runner.aclose()
        write_metrics()
    wall = time.perf_counter() - started
    summary = (
        f"{ran} episodes in {wall:.1f} s ({ran / wall if wall else 0:.2f}/s): {_stats_text(metrics)}; "
        f"output {args.output}, metrics {metrics_path(args.output)}"
    )
    if failed:
        summary += f", {failed} aborted (see {args.failures or failures_path(args.output)}; --retry-failed reruns them)"
    if not args.quiet:
        print(summary, flush=True)
    if interrupted_by:
        not_started = len(plan.items) - ran
        report.print(
            f"sparring collect: stopped by {interrupted_by[0]}: {ran} episodes recorded, {not_started} not started. "
            f"Resume with:\n  {resume_command()}",
            markup=False,
            highlight=False,
        )
        return 130
    return 1 if failed or plan.invalid_tasks else 0


def resume_command() -> str:
    """The command line that was run, with --resume."""
    argv = sys.argv[1:]
    if "--resume" not in argv:
        argv = [*argv, "--resume"]
    return shlex.join(["sparring", *argv])


def _check(args: argparse.Namespace) -> None:
    if not Path(args.input).is_file():
        raise UsageError(f"--input: no such file {args.input}")
    for name in ("repeats", "concurrency"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must not be negative")
    output = Path(args.output)
    if output.exists() and output.stat().st_size and not (args.resume or args.retry_failed):
        raise UsageError(
            f"--output {args.output} already holds records: pass --resume to continue it, "
            "--retry-failed to rerun its aborted episodes, or choose another file"
        )
    if args.retry_failed and not output.exists():
        raise UsageError(f"--retry-failed: no output {args.output} to retry")


def _say_prepared(args: argparse.Namespace, prepared: PreparedOutput, report: Console) -> None:
    if prepared.cut_bytes:
        report.print(
            f"sparring collect: {args.output}: cut a torn last line ({prepared.cut_bytes} bytes, "
            "left by a crash); that episode runs again",
            markup=False,
        )
    if prepared.kept or prepared.rerun:
        report.print(
            f"sparring collect: {args.output}: {prepared.kept} records kept, "
            f"{prepared.dropped_interrupted} interrupted and {prepared.dropped_failed} failed episodes to run again",
            markup=False,
        )


def _stats_text(metrics: MetricsAccumulator) -> str:
    statuses = " ".join(f"{status} {n}" for status, n in sorted(metrics.by_status.items()))
    mean = sum(metrics.rewards) / len(metrics.rewards) if metrics.rewards else None
    return f"{statuses or 'no episodes yet'}, mean reward {'-' if mean is None else f'{mean:.3f}'}"


class _RateColumn(ProgressColumn):
    """Episodes per second so far."""

    def render(self, task: Task) -> Text:
        return Text("-/s" if task.speed is None else f"{task.speed:.2f}/s")


class _Silent:
    """Progress's interface, doing nothing but printing to stderr (for --quiet)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(console: Console, total: int, quiet: bool) -> Progress | _Silent:
    if quiet:
        return _Silent(console)
    return Progress(
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )
