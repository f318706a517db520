"""Thousands of concurrent tic-tac-toe episodes in one process, against a scripted server with fixed latency.

Each latency runs in a fresh child process (so peak RSS is that run's own): `--episodes` episodes
all started at once through the batch runner (`sparring.engine.batch.BatchRunner`, concurrency =
episodes), against `FakeModelProcess(latency_s=L)` in another process, where every model reply
waits L seconds and costs the server almost no CPU.

Ideal wall time = model calls per episode x L: the calls of one episode are strictly sequential
(policy, user, ...), so no episode can finish sooner, and with unlimited concurrency all finish
together. sparring's tic-tac-toe episode is 10 model calls (4 policy + 6 user), so ideal = 10 L.
The needed call rate is episodes x 10 / ideal = episodes / L calls/s (5,000/s at 1 s: beyond one
Python process; 500/s at 10 s). "client CPU" is this process's CPU over wall time: 100% is one
full core, the point where one process saturates.

    .venv/bin/python bench/scale.py                          # 5,000 episodes at 1 s and 10 s: ~4 min
    .venv/bin/python bench/scale.py --episodes 500 --latency 1 --latency 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparring.core.settings import EpisodeSettings
from sparring.engine.batch import BatchItem, BatchRunner
from sparring.engine.engine import Engine
from sparring.engine.gc_tuning import tune_gc_for_rollouts
from sparring.testing import FakeModelProcess

CALLS_PER_EPISODE = 10


def raise_fd_limit() -> tuple[int, int]:
    """The soft open-files limit raised to the hard one (each episode in flight holds one socket per call)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_mb() -> float:
    """Resident set size now, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def one_run(episodes: int, latency: float, timeout_s: float) -> dict[str, Any]:
    """All episodes at once; what it took, against the ideal."""
    fd_limit = raise_fd_limit()
    with FakeModelProcess("tictactoe", latency_s=latency) as server:
        config = EpisodeSettings(
            policy_base_urls=[server.base_url],
            user_base_urls=[server.base_url],
            user_tool_choice="required",
            max_connections=episodes,
            request_timeout_s=max(60.0, 6 * latency),
        )
        engine = Engine(config, env="tictactoe")
        engine.graph("tictactoe")  # built before the clock starts
        runner = BatchRunner(engine, concurrency=episodes)
        items = [BatchItem(task_index=i, repeat_index=0, task={}, env="tictactoe") for i in range(episodes)]
        tune_gc_for_rollouts()
        rss0 = rss_mb()
        peak_fds = open_fds()
        statuses: Counter[str] = Counter()
        calls = ok = 0
        cpu0, wall0, server0 = time.process_time(), time.perf_counter(), process_cpu_s(server.pid)

        async def sample_fds() -> None:
            nonlocal peak_fds
            while True:
                peak_fds = max(peak_fds, open_fds())
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_fds())
        try:
            async with asyncio.timeout(timeout_s):
                async for record in runner.run(items):
                    statuses[f"{record['status']}/{record['stop_reason']}"] += 1
                    calls += record["num_policy_calls"] + record["num_user_calls"]
                    ok += record["reward"] == 1.0
        finally:
            sampler.cancel()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            server_cpu = process_cpu_s(server.pid) - server0
            await runner.aclose()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ideal = CALLS_PER_EPISODE * latency
    return {
        "episodes": episodes,
        "latency_s": latency,
        "finished": sum(statuses.values()),
        "ok": ok,
        "statuses": dict(statuses),
        "model_calls": calls,
        "wall_s": wall,
        "ideal_s": ideal,
        "calls_per_s": calls / wall,
        "needed_calls_per_s": episodes * CALLS_PER_EPISODE / ideal,
        "client_cpu_pct": 100 * cpu / wall,
        "cpu_ms_per_call": 1000 * cpu / max(calls, 1),
        "server_cpu_pct": 100 * server_cpu / wall,
        "rss_before_mb": rss0,
        "peak_rss_mb": peak_kb / 1024,
        "peak_rss_kb_per_episode": (peak_kb - rss0 * 1024) / episodes,
        "peak_open_fds": peak_fds,
        "fd_limit": fd_limit[0],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| episodes | latency | wall s | ideal s | wall / ideal | model calls/s (needed) | client CPU | "
        "CPU ms/call | server CPU | peak RSS MB | KB/episode | peak fds (limit) | completed, reward 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['episodes']} | {r['latency_s']:g} s | {r['wall_s']:.1f} | {r['ideal_s']:.0f} | "
            f"{r['wall_s'] / r['ideal_s']:.2f}x | {r['calls_per_s']:.0f} ({r['needed_calls_per_s']:.0f}) | "
            f"{r['client_cpu_pct']:.0f}% | {r['cpu_ms_per_call']:.2f} | {r['server_cpu_pct']:.0f}% | "
            f"{r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_kb_per_episode']:.0f} | {r['peak_open_fds']} ({r['fd_limit']}) | "
            f"{r['ok']}/{r['episodes']} {r['statuses']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--latency", type=float, action="append", help="seconds per model reply (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="a run taking longer counts as hung")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one latency, JSON out
    args = parser.parse_args(argv)
    latencies = args.latency or [1.0, 10.0]
    if args.one:
        print(json.dumps(asyncio.run(one_run(args.episodes, latencies[0], args.timeout))))
        return 0
    rows = []
    for latency in latencies:
        command = [sys.executable, __file__, "--one", "--episodes", str(args.episodes), "--latency", str(latency)]
        command += ["--timeout", str(args.timeout)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"latency {latency:g} s failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  latency {latency:g} s: done", file=sys.stderr, flush=True)
    print(f"\n{os.cpu_count()} cores; scripted server in another process; one client process (batch runner).\n")
    print(table(rows))
    bad = [r for r in rows if r["ok"] != r["episodes"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
