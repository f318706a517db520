"""Episodes/s and client CPU per model call: sparring's graph vs a bare aiohttp loop vs a naive LangChain graph.

All three play the same tic-tac-toe episodes against one scripted server in a child process
(`FakeModelProcess`), so `time.process_time()` of this process is the client side only: everything the
driver spends per episode (HTTP, JSON, graph, messages, environment, ledger, record). At each
concurrency every variant is warmed up, then measured `--repeats` times round-robin; the table shows
medians and ranges. See bench/README.md for what each variant does and the figures.

    .venv/bin/python bench/episodes.py              # 1-2 minutes on 2 cores
    .venv/bin/python bench/episodes.py --quick      # about 20 s, noisier
    .venv/bin/python bench/episodes.py --tuned-gc   # with gc.freeze() and a 20k gen-0 threshold
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from baseline_aiohttp import AiohttpLoop
from naive_langchain import NaiveLangChainGraph

from sparring.core.settings import EpisodeSettings
from sparring.engine.engine import Engine
from sparring.testing import FakeModelProcess

MEASURE_TIMEOUT_S = 120.0
"""A measurement that takes longer than this is treated as hung (and the concurrency capped)."""
TUNED_GC_THRESHOLD = (20_000, 10, 10)
"""`--tuned-gc`: gen-0 collections every 20k net allocations instead of 700 (CPython's default)."""


class GcClock:
    """CPU seconds spent in the cyclic garbage collector, via `gc.callbacks` (it is part of the client's cost)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started


GC_CLOCK = GcClock()


def tune_gc() -> None:
    """What a long-running rollout process can do: freeze start-up objects out of the GC, collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*TUNED_GC_THRESHOLD)


class Variant(Protocol):
    """A way of playing episodes against the server."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def play(self) -> dict[str, Any]: ...


class SparringGraph:
    """sparring's episode graph, played through an `Engine` with the tic-tac-toe settings the tests use."""

    name = "sparring graph"

    def __init__(self, base_url: str) -> None:
        self.settings = EpisodeSettings(
            policy_base_urls=[base_url], user_base_urls=[base_url], user_tool_choice="required"
        )
        self.engine = Engine(self.settings, env="tictactoe")

    async def start(self) -> None:
        """The graph is built on the first episode, the clients open on the first call."""

    async def close(self) -> None:
        """Close the pooled HTTP sessions."""
        await self.engine.aclose()

    async def play(self) -> dict[str, Any]:
        """One episode through `Engine.play`, record included (that is part of the per-episode work)."""
        return await self.engine.play({})


VARIANTS: dict[str, Callable[[str], Variant]] = {
    "sparring": SparringGraph,
    "aiohttp": AiohttpLoop,
    "langchain": NaiveLangChainGraph,
}


@dataclass
class Sample:
    """One measurement: a batch of episodes at one concurrency."""

    episodes: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    gc_s: float
    model_calls: int
    ok: int

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.wall_s

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.cpu_s / self.model_calls

    @property
    def gc_ms_per_call(self) -> float:
        return 1000 * self.gc_s / self.model_calls

    @property
    def server_ms_per_call(self) -> float:
        return 1000 * self.server_cpu_s / self.model_calls


@dataclass
class Row:
    """The medians of one (variant, concurrency) cell, plus what went wrong if anything did."""

    variant: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    note: str = ""

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(s, attribute) for s in self.samples)


def server_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of the server process so far (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_batch(play: Callable[[], Awaitable[dict[str, Any]]], episodes: int, concurrency: int) -> list[dict]:
    """`episodes` episodes with at most `concurrency` in flight (workers pulling from one counter)."""
    records: list[dict[str, Any]] = []
    left = episodes

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            records.append(await play())

    await asyncio.gather(*(worker() for _ in range(min(concurrency, episodes))))
    return records


def is_ok(record: dict[str, Any]) -> bool:
    """The sanity check: X wins, so every episode completes with reward 1.0."""
    return record.get("status") == "completed" and record.get("reward") == 1.0


async def measure(variant: Variant, episodes: int, concurrency: int, server_pid: int | None) -> Sample:
    """Wall, client CPU and server CPU of one batch; garbage from earlier batches is collected first."""
    gc.collect()
    server0, gc0 = server_cpu_s(server_pid), GC_CLOCK.seconds
    cpu0, wall0 = time.process_time(), time.perf_counter()
    records = await asyncio.wait_for(run_batch(variant.play, episodes, concurrency), MEASURE_TIMEOUT_S)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    calls = sum(r.get("num_policy_calls", 0) + r.get("num_user_calls", 0) for r in records)
    return Sample(
        episodes=len(records),
        wall_s=wall,
        cpu_s=cpu,
        server_cpu_s=server_cpu_s(server_pid) - server0,
        gc_s=GC_CLOCK.seconds - gc0,
        model_calls=max(calls, 1),
        ok=sum(map(is_ok, records)),
    )


async def bench_all(
    variants: Sequence[Variant],
    server_pid: int | None,
    concurrencies: Sequence[int],
    episodes_at: Callable[[int], int],
    repeats: int,
    fallback_concurrency: int,
) -> list[Row]:
    """Per concurrency: warm every variant up, then take the repeats round-robin (A B C A B C ...).

    Round-robin, so that drift on a shared machine (other processes, heap growth) spreads over all
    variants instead of landing on one. A variant that fails or hangs at a level is measured at
    `fallback_concurrency` instead, and the row says so.
    """
    rows: list[Row] = []
    for concurrency in concurrencies:
        level = {v.name: Row(v.name, concurrency) for v in variants}
        used = dict.fromkeys(level, concurrency)
        for variant in variants:
            try:
                await measure(variant, max(4, min(concurrency, 32)), concurrency, server_pid)  # warm-up
            except Exception as exc:  # any failure (a time-out included) is reported, not fatal
                level[variant.name].note = f"capped from {concurrency}: {describe(exc)}"
                used[variant.name] = min(concurrency, fallback_concurrency)
        for _ in range(repeats):
            for variant in variants:
                row = level[variant.name]
                try:
                    row.samples.append(await measure(variant, episodes_at(concurrency), used[variant.name], server_pid))
                except Exception as exc:
                    failure = f"failed at {used[variant.name]}: {describe(exc)}"
                    row.note = f"{row.note}; {failure}" if row.note else failure
        for row in level.values():
            row.concurrency = used[row.variant] if row.samples else concurrency
            rows.append(row)
        print(f"  concurrency {concurrency}: done", file=sys.stderr, flush=True)
    order = [v.name for v in variants]
    return sorted(rows, key=lambda r: (order.index(r.variant), r.concurrency))


def describe(exc: BaseException) -> str:
    """A failure in a few words (a time-out has no message of its own)."""
    if isinstance(exc, TimeoutError):
        return f"no result within {MEASURE_TIMEOUT_S:g} s"
    return f"{type(exc).__name__}: {exc}"


def table(rows: list[Row]) -> str:
    """A Markdown table of medians, with CPU per call relative to the aiohttp loop at the same concurrency."""
    baseline = {r.concurrency: r.median("cpu_ms_per_call") for r in rows if r.variant == AiohttpLoop.name and r.samples}
    lines = [
        "| variant | concurrency | episodes/s | model calls/episode | client CPU ms/call (range) | vs aiohttp | "
        "of which GC | server CPU ms/call | episodes ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.samples:
            lines.append(f"| {row.variant} | {row.concurrency} | - | - | - | - | - | - | {row.note} |")
            continue
        cpu = row.median("cpu_ms_per_call")
        base = baseline.get(row.concurrency)
        ratio = f"{cpu / base:.1f}x" if base else "-"
        episodes = sum(s.episodes for s in row.samples)
        calls = sum(s.model_calls for s in row.samples) / episodes
        ok = sum(s.ok for s in row.samples)
        note = f" ({row.note})" if row.note else ""
        low = min(s.cpu_ms_per_call for s in row.samples)
        high = max(s.cpu_ms_per_call for s in row.samples)
        lines.append(
            f"| {row.variant} | {row.concurrency} | {row.median('episodes_per_s'):.1f} | {calls:.1f} | "
            f"{cpu:.2f} ({low:.2f}-{high:.2f}) | {ratio} | {row.median('gc_ms_per_call'):.2f} | "
            f"{row.median('server_ms_per_call'):.2f} | {ok}/{episodes}{note} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--episodes", type=int, help="episodes per measurement (default: 24 at concurrency 1, 4 x concurrency above)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per cell; the median is shown")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="concurrency levels")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--fallback-concurrency", type=int, default=16, help="used when a variant fails at a level")
    parser.add_argument("--quick", action="store_true", help="fewer episodes and repeats (under a minute)")
    parser.add_argument(
        "--tuned-gc", action="store_true", help="gc.freeze() after start-up, gen-0 threshold 20k; all variants"
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    def episodes_at(concurrency: int) -> int:
        if args.episodes:
            return args.episodes
        return (8 if args.quick else 24) if concurrency == 1 else (2 if args.quick else 4) * concurrency

    repeats = 1 if args.quick and args.repeats == 3 else args.repeats
    if args.tuned_gc:
        tune_gc()
    started = time.perf_counter()
    with FakeModelProcess("tictactoe") as server:
        variants = [VARIANTS[name](server.base_url) for name in args.variants]
        for variant in variants:
            await variant.start()
        try:
            rows = await bench_all(
                variants, server.pid, args.concurrency, episodes_at, repeats, args.fallback_concurrency
            )
        finally:
            for variant in variants:
                await variant.close()
    print(
        f"\ntic-tac-toe episodes against the scripted server; {date.today()}, {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; medians of {repeats} run(s); "
        f"GC {'tuned (--tuned-gc)' if args.tuned_gc else 'CPython defaults'}; "
        f"{time.perf_counter() - started:.0f} s in all.\n"
    )
    print(table(rows))
    print(
        "\nclient CPU = this process's CPU time / model calls (HTTP, JSON, graph, messages, env, ledger, record); "
        "of which GC = time in the cyclic garbage collector (gc.callbacks); "
        "server CPU = the scripted server's, for context (with 2 cores, server and client share the machine)."
    )
    bad = [r for r in rows if not r.samples or any(s.ok != s.episodes for s in r.samples)]
    for row in bad:
        print(f"WARNING: {row.variant} @ {row.concurrency}: not every episode completed with reward 1.0. {row.note}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
