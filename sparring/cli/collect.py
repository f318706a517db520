"""`sparring collect`: the collect library (`sparring.engine.collect`) behind flags and a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.envs.registry import environment_names

if TYPE_CHECKING:
    from rich.console import Console

    from sparring.engine.collect import CollectSpec
    from sparring.engine.metrics import MetricsAccumulator

DESCRIPTION = """Run many episodes from a JSONL file of tasks, appending one rollout record per (task, repeat)
as each ends. Bad task lines are reported with their line and skipped; --resume continues an output
after a crash or Ctrl-C without running any pair twice, and only with the tasks and settings it was
made with (OUTPUT.manifest.json); --retry-failed reruns only aborted pairs. One collector per output.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `sparring collect`."""
    parser = subparsers.add_parser(
        "collect",
        help="run many episodes from a JSONL file of tasks, appending rollout records as they finish",
        description=DESCRIPTION,
    )
    parser.add_argument("--env", default="tictactoe", choices=environment_names(), help="unless a task names one")
    parser.add_argument("--input", required=True, metavar="FILE", help="tasks, JSONL (sparring's or NeMo Gym's rows)")
    parser.add_argument("--output", required=True, metavar="FILE", help="rollout records, JSONL (appended)")
    parser.add_argument("--failures", metavar="FILE", help="aborted episodes (default: OUTPUT.failures.jsonl)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N tasks (after --shuffle)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N", help="episodes per task: a group (GRPO)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N", help="episodes at once (default 8)")
    parser.add_argument(
        "--min-concurrency",
        type=int,
        metavar="N",
        help="adaptive: episodes at once follow the policy servers' waiting queue and KV-cache usage "
        "between N and --concurrency",
    )
    parser.add_argument("--shuffle", action="store_true", help="shuffle the task order (with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue an existing output: skip pairs it holds")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again only the aborted pairs of an existing output"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --resume/--retry-failed: accept settings that differ from the ones the output was made with "
        "(or an output without a manifest); never other tasks",
    )
    parser.add_argument(
        "--grace", type=float, default=0.0, metavar="S", help="on Ctrl-C/SIGTERM, seconds in-flight episodes may finish"
    )
    parser.add_argument(
        "--pass-threshold", type=float, default=1.0, metavar="R", help="reward that counts as a pass in pass@k"
    )
    parser.add_argument(
        "--drop-stale",
        action="store_true",
        help="with --max-staleness: leave out of the output the episodes past it (counted in the metrics file's "
        "staleness.dropped) instead of writing them as aborted/stale",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar; errors still go to stderr")
    group = parser.add_argument_group("more than one process (needs sparring[ray])")
    group.add_argument(
        "--ray",
        action="store_true",
        help="shard the episodes over Ray actors, each running the batch runner at --concurrency; "
        "this process alone writes the output",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="join this Ray cluster (e.g. auto); default: start a local Ray instance bound to 127.0.0.1",
    )
    group.add_argument("--workers", type=int, metavar="N", help="Ray actors, one process each (default 2)")
    add_episode_options(parser)
    parser.set_defaults(func=cmd_collect)


def spec_from_args(args: argparse.Namespace) -> CollectSpec:
    """The library's CollectSpec for this command line; settings resolved from the flags per environment."""
    from sparring.engine.collect import CollectSpec, RaySpec

    if not args.ray and (args.address is not None or args.workers is not None):
        raise UsageError("--address and --workers go with --ray")
    return CollectSpec(
        input=args.input,
        output=args.output,
        env=args.env,
        settings=lambda env: settings_from_args(args, env),
        failures=args.failures,
        repeats=args.repeats,
        concurrency=args.concurrency,
        min_concurrency=args.min_concurrency,
        limit=args.limit,
        shuffle=args.shuffle,
        seed=args.seed,
        resume=args.resume,
        retry_failed=args.retry_failed,
        force=args.force,
        grace_s=args.grace,
        pass_threshold=args.pass_threshold,
        drop_stale=args.drop_stale,
        ray=RaySpec(workers=2 if args.workers is None else args.workers, address=args.address) if args.ray else None,
    )


def cmd_collect(args: argparse.Namespace) -> int:
    """Run the collection; exit 0 when every episode ran, 1 when some aborted or lines were bad, 130 when stopped."""
    return asyncio.run(collect_command(args))


async def collect_command(args: argparse.Namespace) -> int:
    """The command's body, for callers already in an event loop (tests)."""
    from rich.console import Console

    from sparring.engine.collect import collect, failures_file
    from sparring.engine.gc_tuning import tune_gc_for_rollouts
    from sparring.engine.output import metrics_path

    spec = spec_from_args(args)
    spec.check()  # before the progress bar draws anything: a bad flag or path is one line
    settings_from_args(args, args.env)
    console = Console(stderr=True, soft_wrap=True)
    progress = _QuietProgress(console) if args.quiet else _BarProgress(console)
    tune_gc_for_rollouts()
    with progress:
        result = await collect(spec, progress=progress, stop_on_signals=True)
    wall = result.wall_s
    summary = (
        f"{result.episodes} episodes in {wall:.1f} s ({result.episodes / wall if wall else 0:.2f}/s): "
        f"{_stats_text(result.metrics['by_status'], result.metrics['reward']['mean'])}; "
        f"output {args.output}, metrics {metrics_path(args.output)}"
    )
    labels: Counter[str] = Counter()
    for per_env in result.metrics["attribution"].values():
        labels.update(per_env["labels"])
    if labels:
        summary += "; who made them fail: " + ", ".join(f"{label} {n}" for label, n in sorted(labels.items()))
    if result.failed:
        summary += f", {result.failed} aborted (see {failures_file(spec)}; --retry-failed reruns them)"
    if not args.quiet:
        print(summary, flush=True)
    if result.interrupted_by:
        console.print(
            f"sparring collect: stopped by {result.interrupted_by}: {result.episodes} episodes recorded, "
            f"{result.not_started} not started. Resume with:\n  {resume_command()}",
            markup=False,
            highlight=False,
        )
    return result.exit_code


def resume_command() -> str:
    """The command line that was run, with --resume."""
    argv = sys.argv[1:]
    if "--resume" not in argv:
        argv = [*argv, "--resume"]
    return shlex.join(["sparring", *argv])


def _stats_text(by_status: dict[str, int], mean: float | None) -> str:
    statuses = " ".join(f"{status} {n}" for status, n in sorted(by_status.items()))
    return f"{statuses or 'no episodes yet'}, mean reward {'-' if mean is None else f'{mean:.3f}'}"


class _QuietProgress:
    """No bar; what must be read still goes to stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> _QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def start(self, total: int) -> None:
        return None

    def advance(self, record: dict[str, Any], metrics: MetricsAccumulator) -> None:
        return None

    def say(self, message: str) -> None:
        self.console.print(f"sparring collect: {message}", markup=False, highlight=False)


class _BarProgress(_QuietProgress):
    """A rich progress bar: done/total, episodes/s, elapsed, ETA, counts by status and the mean reward."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(console)
        self.bar = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
        )
        self.task_id = TaskID(0)

    def __enter__(self) -> _BarProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)

    def start(self, total: int) -> None:
        self.task_id = self.bar.add_task("episodes", total=total, stats="", rate="-/s")

    def advance(self, record: dict[str, Any], metrics: MetricsAccumulator) -> None:
        task = self.bar.tasks[self.task_id]
        rate = "-/s" if task.speed is None else f"{task.speed:.2f}/s"
        self.bar.update(self.task_id, advance=1, stats=_stats_text(metrics.by_status, metrics.mean_reward), rate=rate)

    def say(self, message: str) -> None:
        self.bar.console.print(f"sparring collect: {message}", markup=False, highlight=False)
