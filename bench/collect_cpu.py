"""Client CPU per model call through `sparring collect`, beside the bare aiohttp loop, in one run.

Against one scripted server in a child process (tic-tac-toe, 10 model calls an episode):
1. `sparring collect` as a real subprocess at concurrency C, twice: with N episodes and with 1 episode.
   Its CPU (user + system, from wait4) per model call is given two ways: all of it over the calls, and
   the marginal cost (CPU of the N-episode run minus the 1-episode run, over the calls between them), so
   start-up (imports, the first graph) is not spread over the calls.
2. The bare loop (`baseline_aiohttp.py`: one aiohttp session, orjson, the same request bodies and the
   same ledger work, no framework) in this process at the same concurrency, N episodes, CPU from
   `time.process_time()`.
Runs alternate (collect, loop, collect, loop, ...) for `--repeats` rounds so drift on a shared machine
spreads over both; the table shows the median and range. Also the start-up: `sparring --help` wall
time and the 1-episode collect's wall and CPU.

    .venv/bin/python bench/collect_cpu.py [--episodes 1000] [--concurrency 64] [--repeats 3]

With `--against CHECKOUT` (another checkout of sparring, e.g. a `git worktree` of an older commit),
each round also runs that checkout's `sparring collect` and `--help` (its code on PYTHONPATH, this venv)
against the same server, so the two are compared pair by pair in one run: this code / that code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_aiohttp import AiohttpLoop

from sparring.testing import FakeModelProcess

SPARRING = [sys.executable, "-m", "sparring.cli"]
HERE = Path(__file__).resolve().parent.parent


def run_timed(argv: list[str], code: Path = HERE) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Run a command with `code`'s sparring; (wall seconds, CPU seconds of the child, the result)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(code)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout = process.stdout.read() if process.stdout else b""
    stderr = process.stderr.read() if process.stderr else b""
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    return wall, usage.ru_utime + usage.ru_stime, subprocess.CompletedProcess(argv, code, stdout, stderr)


def collect_once(
    base_url: str, episodes: int, concurrency: int, workdir: Path, code: Path = HERE
) -> tuple[float, float, int]:
    """One `sparring collect` of `episodes` default tic-tac-toe tasks: (wall s, CPU s, model calls)."""
    tasks = workdir / f"tasks-{episodes}.jsonl"
    tasks.write_text("{}\n" * episodes)
    output = workdir / f"out-{episodes}-{time.monotonic_ns()}.jsonl"
    argv = [*SPARRING, "collect", "--input", str(tasks), "--output", str(output), "--quiet"]
    argv += ["--concurrency", str(concurrency), "--policy-base-url", base_url, "--user-base-url", base_url]
    wall, cpu, result = run_timed(argv, code)
    if result.returncode != 0:
        raise RuntimeError(f"collect failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    bad = [r for r in records if r["reward"] != 1.0]
    if len(records) != episodes or bad:
        raise RuntimeError(f"collect gave {len(records)} records, {len(bad)} not won")
    calls = sum(r["num_policy_calls"] + r["num_user_calls"] for r in records)
    return wall, cpu, calls


async def loop_once(base_url: str, episodes: int, concurrency: int) -> tuple[float, int]:
    """The bare loop: (CPU s of this process, model calls)."""
    loop = AiohttpLoop(base_url)
    await loop.start()
    try:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> dict:
            async with slots:
                return await loop.play()

        await asyncio.gather(*(one() for _ in range(min(concurrency, 8))))  # warm-up
        started = time.process_time()
        records = await asyncio.gather(*(one() for _ in range(episodes)))
        cpu = time.process_time() - started
    finally:
        await loop.close()
    return cpu, sum(r["num_policy_calls"] + r["num_user_calls"] for r in records)


def help_wall(code: Path = HERE) -> float:
    wall, _, result = run_timed([*SPARRING, "--help"], code)
    assert result.returncode == 0, result.stderr
    return wall


def describe(values: list[float], unit: str = "") -> str:
    return f"{statistics.median(values):.3f}{unit} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another sparring checkout to compare with, round by round")
    args = parser.parse_args(argv)
    other: dict[str, list[float]] = {"help": [], "marginal": [], "start_cpu": []}
    per_call_all: list[float] = []
    per_call_marginal: list[float] = []
    per_call_loop: list[float] = []
    helps: list[float] = []
    start_walls: list[float] = []
    start_cpus: list[float] = []
    with FakeModelProcess("tictactoe") as server, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        collect_once(server.base_url, 8, args.concurrency, workdir)  # warm the file cache
        for _ in range(args.repeats):
            helps.append(help_wall())
            wall1, cpu1, calls1 = collect_once(server.base_url, 1, 1, workdir)
            start_walls.append(wall1)
            start_cpus.append(cpu1)
            _, cpu_n, calls_n = collect_once(server.base_url, args.episodes, args.concurrency, workdir)
            per_call_all.append(1000 * cpu_n / calls_n)
            per_call_marginal.append(1000 * (cpu_n - cpu1) / (calls_n - calls1))
            cpu_loop, calls_loop = asyncio.run(loop_once(server.base_url, args.episodes, args.concurrency))
            per_call_loop.append(1000 * cpu_loop / calls_loop)
            if args.against is not None:
                other["help"].append(help_wall(args.against))
                _, cpu1, calls1 = collect_once(server.base_url, 1, 1, workdir, args.against)
                _, cpu_n, calls_n = collect_once(
                    server.base_url, args.episodes, args.concurrency, workdir, args.against
                )
                other["start_cpu"].append(cpu1)
                other["marginal"].append(1000 * (cpu_n - cpu1) / (calls_n - calls1))
    ratios = [m / b for m, b in zip(per_call_marginal, per_call_loop, strict=True)]
    print(f"{args.episodes} tic-tac-toe episodes at concurrency {args.concurrency}, {args.repeats} rounds")
    print(f"sparring collect, CPU ms per model call, all of it:      {describe(per_call_all)}")
    print(f"sparring collect, CPU ms per model call, start-up taken out: {describe(per_call_marginal)}")
    print(f"bare aiohttp loop, CPU ms per model call:                {describe(per_call_loop)}")
    print(f"ratio (start-up taken out / bare loop):                  {describe(ratios, 'x')}")
    print(f"`sparring --help` wall s:                                {describe(helps)}")
    print(f"1-episode collect: wall s {describe(start_walls)}, CPU s {describe(start_cpus)}")
    if args.against is not None:
        print(f"{args.against}, paired round by round (this code / that code):")
        print(
            f"  CPU ms per model call, start-up taken out: {describe(other['marginal'])}, ratio "
            f"{describe([a / b for a, b in zip(per_call_marginal, other['marginal'], strict=True)], 'x')}"
        )
        print(
            f"  `sparring --help` wall s: {describe(other['help'])}, ratio "
            f"{describe([a / b for a, b in zip(helps, other['help'], strict=True)], 'x')}"
        )
        print(
            f"  1-episode collect CPU s: {describe(other['start_cpu'])}, ratio "
            f"{describe([a / b for a, b in zip(start_cpus, other['start_cpu'], strict=True)], 'x')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
