"""Ray scaling: episodes/s of `collect --ray` with 2 workers against 1, on a CPU-bound load.

The load is the full tic-tac-toe graph against the scripted model server in its own process (no
latency: every millisecond is CPU, ours or the server's), so the figure shows how far more worker
processes turn into more episodes. Each Ray worker runs the batch runner at `--concurrency`; the
in-process batch runner (no Ray) at the same concurrency is measured beside them as the baseline.
Rounds alternate the variants (noisy shared machine); the table gives medians and ranges.

Two rates per run: *working* (episodes over the time from the moment every worker is up to the last
record: the workers' throughput) and *overall* (over the whole call, actor start-up included). CPU
seconds are read from /proc for the server and the Ray workers, and for this process (the driver).

    .venv/bin/python bench/ray_scaling.py                    # about 2 minutes on 2 cores
    .venv/bin/python bench/ray_scaling.py --episodes 150 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparring.engine.batch import BatchItem, BatchRunner
from sparring.engine.engine import Engine
from sparring.engine.ray_runner import RayRunner, connect
from sparring.engine.settings import default_settings
from sparring.testing import FakeModelProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Run:
    variant: str
    episodes: int
    wall_s: float
    rate: float
    server_cpu_s: float
    worker_cpu_s: float
    driver_cpu_s: float
    ok: int


async def measure(variant: str, runner: Any, episodes: int, server: FakeModelProcess) -> Run:
    items = [BatchItem(index, 0, {}, "tictactoe") for index in range(episodes)]
    server_cpu, driver_cpu = cpu_seconds(server.pid or 0), time.process_time()
    worker_cpu: dict[int, float] = {}
    started = time.perf_counter()
    ready = asyncio.create_task(workers_up(runner))
    episodes_done = ok = 0
    async for record in runner.run(items):
        episodes_done += 1
        if record["status"] == "completed" and record["reward"] == 1.0:
            ok += 1
        elif episodes_done - ok == 1:
            print(f"{variant}: an episode ended {record['status']} ({record['stop_reason']}): {record['error']}")
        for pid in getattr(runner, "worker_pids", {}).values():
            worker_cpu[pid] = cpu_seconds(pid)  # read while alive: the actors are killed at the end
    ended = time.perf_counter()
    return Run(
        variant,
        episodes_done,
        ended - started,
        episodes_done / (ended - await ready),
        cpu_seconds(server.pid or 0) - server_cpu,
        sum(worker_cpu.values()),
        time.process_time() - driver_cpu,
        ok,
    )


async def workers_up(runner: Any) -> float:
    """When every worker of a Ray runner has started (at once for the in-process runner)."""
    while len(getattr(runner, "worker_pids", ())) < getattr(runner, "workers", 0):
        await asyncio.sleep(0.005)
    return time.perf_counter()


def summarize(runs: list[Run], variants: list[str]) -> None:
    by_variant = {name: [r for r in runs if r.variant == name] for name in variants}
    median = {name: statistics.median(r.rate for r in rs) for name, rs in by_variant.items()}
    print()
    print("| variant | episodes/s working (range) | episodes/s overall | ok | CPU s: server | workers | driver |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rs in by_variant.items():
        rates = [r.rate for r in rs]

        def mid(values: list[float]) -> str:
            return f"{statistics.median(values):.1f}"

        print(
            f"| {name} | {mid(rates)} ({min(rates):.1f}-{max(rates):.1f}) | {mid([r.episodes / r.wall_s for r in rs])} "
            f"| {sum(r.ok for r in rs)}/{sum(r.episodes for r in rs)} | {mid([r.server_cpu_s for r in rs])} "
            f"| {mid([r.worker_cpu_s for r in rs])} | {mid([r.driver_cpu_s for r in rs])} |"
        )
    ratio = median["ray 2 workers"] / median["ray 1 worker"] if median["ray 1 worker"] else float("nan")
    print(f"\nray 2 workers / ray 1 worker (episodes/s while working): {ratio:.2f}x")
    if median["in-process"]:
        print(f"ray 1 worker / in-process batch runner: {median['ray 1 worker'] / median['in-process']:.2f}x")
    print(f"cores: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")


async def main(args: argparse.Namespace) -> int:
    with FakeModelProcess("tictactoe") as server:
        config = replace(
            default_settings("tictactoe"), policy_base_urls=[server.base_url], user_base_urls=[server.base_url]
        )
        started_ray = connect(None, workers=2)
        variants = ["in-process", "ray 1 worker", "ray 2 workers"]
        runs: list[Run] = []
        try:
            warm = RayRunner(config, workers=2, concurrency=args.concurrency)  # first actor start is slower
            async for _ in warm.run([BatchItem(i, 0, {}, "tictactoe") for i in range(8)]):
                pass
            for round_number in range(args.rounds):
                for variant in variants:
                    if variant == "in-process":
                        runner: Any = BatchRunner(Engine(config), concurrency=args.concurrency)
                    else:
                        runner = RayRunner(config, workers=int(variant.split()[1]), concurrency=args.concurrency)
                    run = await measure(variant, runner, args.episodes, server)
                    if isinstance(runner, BatchRunner):
                        await runner.aclose()
                    runs.append(run)
                    print(
                        f"round {round_number + 1} {variant:<14} {run.episodes} episodes, {run.rate:6.1f}/s working, "
                        f"{run.episodes / run.wall_s:6.1f}/s overall, CPU s: server {run.server_cpu_s:.1f}, "
                        f"workers {run.worker_cpu_s:.1f}, driver {run.driver_cpu_s:.1f}",
                        flush=True,
                    )
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    summarize(runs, variants)
    return 0 if all(r.ok == r.episodes == args.episodes for r in runs) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=300, help="episodes per run (default 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="episodes at once per worker (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all variants, alternated (default 2)")
    sys.exit(asyncio.run(main(parser.parse_args())))
