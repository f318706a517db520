"""`collect` as a library: a JSONL file of tasks in, one rollout record per (task, repeat) out.

    result = await collect(CollectSpec(input="tasks.jsonl", output="rollouts.jsonl", repeats=8))
    result.exit_code      # 0: every episode ran; 1: some aborted or lines were bad; 130: stopped

Resume, the failures file, `retry_failed`, the checks of the output paths, the lock that keeps a
second collector off the same output and the manifest that ties an output to its tasks and settings
follow the rules in `engine/output.py`; the metrics
file is `engine/metrics.py`'s summary, rewritten (atomically) at most every `METRICS_EVERY_S` and
at the end. The order of work: tasks are read (bad lines reported and counted, never fatal),
optionally shuffled with a seed, cut to `limit`, expanded into `repeats` items each (the repeats of
a task stay next to each other, so a group finishes together and shares vLLM's prefix cache),
minus the pairs the output already holds. `sparring collect` is a thin parser over this.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sparring.core.errors import UsageError
from sparring.core.settings import EpisodeSettings
from sparring.core.task import TaskError, scan_tasks
from sparring.core.versions import is_stale
from sparring.engine.batch import AdaptiveConcurrency, BatchItem, BatchRunner, Runner
from sparring.engine.engine import Engine
from sparring.engine.metrics import MetricsAccumulator
from sparring.engine.output import (
    OutputLock,
    PreparedOutput,
    RecordWriter,
    check_output_path,
    failures_path,
    is_failure,
    make_manifest,
    metrics_path,
    prepare_output,
    resumed_manifest,
    write_json_atomically,
    write_manifest,
)
from sparring.engine.settings import resolve_settings

METRICS_EVERY_S = 2.0


@dataclass
class RaySpec:
    """Run the episodes on Ray actors instead of in this process (needs sparring[ray])."""

    workers: int = field(default=2, metadata={"description": "Ray actors, one process each."})
    address: str | None = field(
        default=None, metadata={"description": "Join this Ray cluster (e.g. 'auto'); default: a local loopback one."}
    )


@dataclass
class CollectSpec:
    """What to collect and how; every field but `input` and `output` has a default."""

    input: str | Path = field(metadata={"description": "Tasks, JSONL: sparring's rows or NeMo Gym's."})
    output: str | Path = field(metadata={"description": "Rollout records, JSONL, appended as episodes end."})
    env: str = field(default="tictactoe", metadata={"description": "The environment of tasks that name none."})
    settings: EpisodeSettings | Callable[[str], EpisodeSettings] | None = field(
        default=None,
        metadata={
            "description": "Episode settings: one for every environment, or a function of its name; "
            "default: resolved as the CLI does (environment, `sparring models up`, SPARRING_* variables)."
        },
    )
    failures: str | Path | None = field(
        default=None, metadata={"description": "Where aborted episodes are logged; default OUTPUT.failures.jsonl."}
    )
    repeats: int = field(default=1, metadata={"description": "Episodes per task: a group (GRPO)."})
    concurrency: int = field(default=8, metadata={"description": "Episodes at once (per Ray worker with `ray`)."})
    min_concurrency: int | None = field(
        default=None,
        metadata={
            "description": "Adaptive concurrency: episodes at once follow the policy servers' waiting queue and "
            "KV-cache usage between this and `concurrency` (engine/batch.py); None: always `concurrency`."
        },
    )
    limit: int | None = field(default=None, metadata={"description": "Only the first N tasks (after shuffling)."})
    shuffle: bool = field(default=False, metadata={"description": "Shuffle the task order, with `seed`."})
    seed: int = field(default=0, metadata={"description": "Seed of `shuffle`."})
    resume: bool = field(default=False, metadata={"description": "Continue an existing output: skip pairs it holds."})
    retry_failed: bool = field(
        default=False, metadata={"description": "Run again the aborted pairs of an existing output."}
    )
    force: bool = field(
        default=False,
        metadata={
            "description": "Resume an output made with other settings (or without a manifest), deliberately; "
            "never one made from other tasks."
        },
    )
    grace_s: float = field(
        default=0.0, metadata={"description": "On stop (Ctrl-C, SIGTERM), seconds in-flight episodes may finish."}
    )
    pass_threshold: float = field(default=1.0, metadata={"description": "Reward that counts as a pass in pass@k."})
    drop_stale: bool = field(
        default=False,
        metadata={
            "description": "Leave out of the output the episodes past the settings' `max_staleness` (ended "
            "aborted/stale, or measured so when they ended), counted in the metrics; False: they are written."
        },
    )
    ray: RaySpec | None = field(default=None, metadata={"description": "Run on Ray actors; None: in this process."})

    def check(self) -> None:
        """Refuse what cannot run, before anything starts; messages name the field and its CLI flag."""
        if not Path(self.input).is_file():
            raise UsageError(f"input (--input): no such file {self.input}")
        for name in ("repeats", "concurrency"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} (--{name}) must be at least 1")
        if self.min_concurrency is not None:
            if not 1 <= self.min_concurrency <= self.concurrency:
                raise UsageError(
                    f"min_concurrency (--min-concurrency) must be between 1 and concurrency ({self.concurrency}), "
                    f"got {self.min_concurrency}"
                )
            if self.ray is not None:
                raise UsageError("min_concurrency (--min-concurrency) works in one process, not with ray (--ray)")
        if self.limit is not None and self.limit < 0:
            raise UsageError("limit (--limit) must not be negative")
        if not math.isfinite(self.grace_s) or self.grace_s < 0:
            raise UsageError(f"grace_s (--grace) must be a number of seconds, at least 0, got {self.grace_s!r}")
        if not math.isfinite(self.pass_threshold):
            raise UsageError(f"pass_threshold (--pass-threshold) must be a finite number, got {self.pass_threshold!r}")
        output = check_output_path(self.output, "output (--output)")
        failures = check_output_path(failures_file(self), "failures (--failures)")
        if failures.resolve() == output.resolve():
            raise UsageError(f"failures (--failures) {failures}: the output itself; name another file")
        if output.exists() and output.stat().st_size and not (self.resume or self.retry_failed):
            raise UsageError(
                f"output {self.output} already holds records: resume (--resume) to continue it, "
                "retry_failed (--retry-failed) to rerun its aborted episodes, or choose another file"
            )
        if self.retry_failed and not output.exists():
            raise UsageError(f"retry_failed (--retry-failed): no output {self.output} to retry")
        if self.ray is not None:
            if self.ray.workers < 1:
                raise UsageError("ray.workers (--workers) must be at least 1")
            if importlib.util.find_spec("ray") is None:
                raise UsageError("ray (--ray) needs Ray: pip install 'sparring[ray]'")


class CollectProgress(Protocol):
    """What `collect` reports as it goes: the CLI draws a progress bar, a script may log or ignore it."""

    def start(self, total: int) -> None:
        """`total` episodes are about to run."""

    def advance(self, record: dict[str, Any], metrics: MetricsAccumulator) -> None:
        """One more episode ended (its record is written)."""

    def say(self, message: str) -> None:
        """Something the user should read: a skipped line, a cut torn line, an aborted episode, a stop."""


class SilentProgress:
    """Reports nothing."""

    def start(self, total: int) -> None:
        return None

    def advance(self, record: dict[str, Any], metrics: MetricsAccumulator) -> None:
        return None

    def say(self, message: str) -> None:
        return None


@dataclass
class CollectResult:
    """What a collection did."""

    episodes: int
    """Episodes played in this run."""
    failed: int
    """Of those, aborted by a failure (they are in the failures file too)."""
    invalid_tasks: int
    """Task lines that could not be read, each reported with its file and line."""
    kept: int
    """Records an earlier run left in the output (resume / retry failed)."""
    planned: int
    """Episodes this run was to play."""
    wall_s: float
    metrics: dict[str, Any]
    """The metrics file's content at the end."""
    interrupted_by: str | None = None
    """The signal that stopped the run, if one did."""

    @property
    def not_started(self) -> int:
        """Planned episodes that never started (the run was stopped)."""
        return self.planned - self.episodes

    @property
    def exit_code(self) -> int:
        """130 when stopped, 1 when episodes aborted or lines were bad, else 0."""
        if self.interrupted_by:
            return 130
        return 1 if self.failed or self.invalid_tasks else 0


def read_task_file(spec: CollectSpec, progress: CollectProgress) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The input's good tasks by index, and how many lines were bad (each reported with its file and line)."""
    tasks: list[tuple[int, dict[str, Any]]] = []
    invalid = 0
    for task_index, _, task in scan_tasks(spec.input):
        if isinstance(task, TaskError):
            invalid += 1
            progress.say(f"skipped {task}")
            continue
        tasks.append((task_index, task))
    return tasks, invalid


def plan_items(spec: CollectSpec, tasks: list[tuple[int, dict[str, Any]]], prepared: PreparedOutput) -> list[BatchItem]:
    """The input's good tasks in, items out (see the module docstring for the order of the steps)."""
    tasks = list(tasks)
    if spec.shuffle:
        random.Random(spec.seed).shuffle(tasks)
    if spec.limit is not None:
        tasks = tasks[: spec.limit]
    retry_only = spec.retry_failed and not spec.resume
    return [
        BatchItem(task_index, repeat, task, task.get("env") or spec.env)
        for task_index, task in tasks
        for repeat in range(spec.repeats)
        if (task_index, repeat) not in prepared.done and (not retry_only or (task_index, repeat) in prepared.rerun)
    ]


def make_runner(spec: CollectSpec, settings: Callable[[str], EpisodeSettings]) -> Runner:
    """The batch runner in this process, or with `spec.ray` the same runner on Ray actors."""
    if spec.ray is None:
        adaptive = None
        if spec.min_concurrency is not None:
            adaptive = AdaptiveConcurrency(minimum=spec.min_concurrency, maximum=spec.concurrency)
        return BatchRunner(Engine(settings, env=spec.env), concurrency=spec.concurrency, adaptive=adaptive)
    from sparring.engine.ray_runner import RayRunner  # imports nothing of Ray until it runs

    return RayRunner(settings, workers=spec.ray.workers, concurrency=spec.concurrency, address=spec.ray.address)


def settings_source(spec: CollectSpec) -> Callable[[str], EpisodeSettings]:
    """Settings per environment name; the run's environment is resolved at once, so a missing endpoint fails early."""
    given = spec.settings
    if isinstance(given, EpisodeSettings):
        return lambda _env: given
    resolve = given or resolve_settings
    cache = {spec.env: resolve(spec.env)}

    def settings_for(env: str) -> EpisodeSettings:
        if env not in cache:
            cache[env] = resolve(env)
        return cache[env]

    return settings_for


async def collect(
    spec: CollectSpec, *, progress: CollectProgress | None = None, stop_on_signals: bool = False
) -> CollectResult:
    """Prepare the output, run the items, keep the metrics file current; see the module docstring.

    `stop_on_signals`: SIGINT and SIGTERM stop the run (in-flight episodes get `grace_s`, then end as
    interrupted records; a second signal ends the grace period), as `sparring collect` does.
    """
    spec.check()
    progress = progress or SilentProgress()
    with OutputLock(spec.output, "output (--output)"), OutputLock(failures_file(spec), "failures (--failures)"):
        return await _collect(spec, progress, stop_on_signals)


async def _collect(spec: CollectSpec, progress: CollectProgress, stop_on_signals: bool) -> CollectResult:
    """`collect` while this process holds the output's and the failures file's locks."""
    settings = settings_source(spec)
    tasks, invalid_tasks = read_task_file(spec, progress)
    manifest = make_manifest(spec.input, spec.env, _playable_envs(spec, tasks, settings), settings)
    notes: list[str] = []
    output = Path(spec.output)
    if output.exists() and output.stat().st_size:  # `check` allows this only when resuming or retrying
        manifest, notes = resumed_manifest(output, manifest, force=spec.force)
    metrics = MetricsAccumulator(pass_threshold=spec.pass_threshold)
    prepared = prepare_output(spec.output, retry_failed=spec.retry_failed, on_kept=metrics.add)
    for note in notes:
        progress.say(note)
    _say_prepared(spec, prepared, progress)
    items = plan_items(spec, tasks, prepared)
    write_manifest(spec.output, manifest)
    runner = make_runner(spec, settings)
    writer = RecordWriter(spec.output, spec.failures)
    started = time.perf_counter()
    ran = failed = 0
    interrupted_by: list[str] = []

    def summary() -> dict[str, Any]:
        stats = runner.stats()
        return metrics.summary(
            wall_s=time.perf_counter() - started,
            episodes_this_run=ran,
            latency=stats.latency,
            replicas=stats.replicas,
            invalid_tasks=invalid_tasks,
        )

    def on_signal(name: str) -> None:
        grace = 0.0 if interrupted_by else spec.grace_s  # a second signal ends the grace period
        interrupted_by.append(name)
        progress.say(f"{name}: stopping; episodes still running in {grace:g} s end as interrupted")
        runner.stop(grace)

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop_on_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)
    last_metrics = 0.0
    try:
        progress.start(len(items))
        async for record in runner.run(items):
            ran += 1
            if spec.drop_stale and is_stale(record, settings(str(record.get("env"))).max_staleness):
                metrics.stale_dropped += 1  # not written: a resumed collect plays the pair again
                progress.advance(record, metrics)
                continue
            writer.write(record)
            metrics.add(record)
            if is_failure(record):
                failed += 1
                error = record.get("error") or {}
                progress.say(
                    f"task {record['task_index']} repeat {record['repeat_index']} ({record['id']}) aborted, "
                    f"{record['stop_reason']}: {error.get('type')}: {error.get('message')}"
                )
            progress.advance(record, metrics)
            if time.perf_counter() - last_metrics >= METRICS_EVERY_S:
                write_json_atomically(metrics_path(spec.output), summary())
                last_metrics = time.perf_counter()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        writer.close()
        await runner.aclose()
        final = summary()
        write_json_atomically(metrics_path(spec.output), final)
    return CollectResult(
        episodes=ran,
        failed=failed,
        invalid_tasks=invalid_tasks,
        kept=prepared.kept,
        planned=len(items),
        wall_s=time.perf_counter() - started,
        metrics=final,
        interrupted_by=interrupted_by[0] if interrupted_by else None,
    )


def _playable_envs(
    spec: CollectSpec, tasks: list[tuple[int, dict[str, Any]]], settings: Callable[[str], EpisodeSettings]
) -> list[str]:
    """The environments the tasks play whose settings resolve (the others' episodes end `invalid_task`)."""
    playable = []
    for env in sorted({spec.env} | {task.get("env") or spec.env for _, task in tasks}):
        try:
            settings(env)
        except UsageError:
            continue
        playable.append(env)
    return playable


def _say_prepared(spec: CollectSpec, prepared: PreparedOutput, progress: CollectProgress) -> None:
    if prepared.cut_bytes:
        progress.say(
            f"{spec.output}: cut a torn last line ({prepared.cut_bytes} bytes, left by a crash); "
            "that episode runs again"
        )
    if prepared.kept or prepared.rerun:
        progress.say(
            f"{spec.output}: {prepared.kept} records kept, {prepared.dropped_interrupted} interrupted and "
            f"{prepared.dropped_failed} failed episodes to run again"
        )


def failures_file(spec: CollectSpec) -> Path:
    """Where the run's aborted episodes go."""
    return Path(spec.failures) if spec.failures else failures_path(spec.output)
