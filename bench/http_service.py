"""Episodes/s and CPU per episode through `sparring serve` vs the same episodes in-process, in one run.

All variants play the same tic-tac-toe episodes against one scripted model server in a child process
(`FakeModelProcess`), at the same concurrency:
- in-process: `BatchRunner` in this process (what `sparring collect` does);
- HTTP batch: one `POST /v1/rollouts/batch` to a `sparring serve` child process, records read as NDJSON;
- HTTP single: one `POST /v1/rollouts` per episode, `concurrency` requests in flight (httpx).
CPU per episode counts every process of ours: this one plus the service's (from /proc), never the
model server's. Each variant is measured `--repeats` times round-robin after a warm-up; medians shown,
with the ratio to in-process computed within the run (the machine is noisy).

    .venv/bin/python bench/http_service.py                # about a minute on 2 cores
    .venv/bin/python bench/http_service.py --episodes 64 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparring.engine.batch import BatchItem, BatchRunner
from sparring.engine.engine import Engine
from sparring.engine.settings import default_settings
from sparring.testing import FakeModelProcess


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def in_process(base_url: str, episodes: int, concurrency: int) -> None:
    config = default_settings("tictactoe")
    config.policy_base_urls, config.user_base_urls = [base_url], [base_url]
    runner = BatchRunner(Engine(config), concurrency=concurrency)
    items = [BatchItem(i, 0, {}, "tictactoe") for i in range(episodes)]
    try:
        statuses = [record["status"] async for record in runner.run(items)]
    finally:
        await runner.aclose()
    assert statuses.count("completed") == episodes, statuses


async def http_batch(url: str, episodes: int, concurrency: int) -> None:
    body = {"tasks": [{}] * episodes, "concurrency": concurrency}
    async with (
        httpx.AsyncClient(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/rollouts/batch", json=body) as stream,
    ):
        lines = [orjson.loads(line) async for line in stream.aiter_lines()]
    assert lines[-1]["summary"]["counts"] == {"completed": episodes}, lines[-1]


async def http_single(url: str, episodes: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        remaining = iter(range(episodes))

        async def worker() -> None:
            for _ in remaining:
                response = await client.post("/v1/rollouts", json={})
                assert response.json()["records"][0]["status"] == "completed"

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def start_service(base_url: str, concurrency: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "sparring.cli", "serve", "--port", "0"),
            *("--policy-base-url", base_url, "--user-base-url", base_url),
            *("--max-concurrent-episodes", str(concurrency), "--batch-concurrency", str(concurrency)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()
    return process, banner.split("listening on ")[1].split()[0]


def measure(run: Callable[[], Awaitable[None]], service_pid: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process plus the service's)."""
    cpu0 = time.process_time() + (cpu_s(service_pid) if service_pid else 0.0)
    wall0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - wall0
    return wall, time.process_time() + (cpu_s(service_pid) if service_pid else 0.0) - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, c = args.episodes, args.concurrency
    with FakeModelProcess() as models:
        service, url = start_service(models.base_url, c)
        try:
            variants: dict[str, tuple[Callable[[], Awaitable[None]], int | None]] = {
                "in-process (BatchRunner)": (lambda: in_process(models.base_url, n, c), None),
                "HTTP batch (NDJSON)": (lambda: http_batch(url, n, c), service.pid),
                "HTTP single requests": (lambda: http_single(url, n, c), service.pid),
            }
            for run, pid in variants.values():  # warm-up: imports, graphs, connection pools
                measure(lambda run=run: run(), pid)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (run, pid) in variants.items():
                    results[name].append(measure(run, pid))
        finally:
            service.terminate()
            service.wait(timeout=60)
    base_eps = n / statistics.median(w for w, _ in results["in-process (BatchRunner)"])
    base_cpu = statistics.median(c_ for _, c_ in results["in-process (BatchRunner)"]) / n
    print(
        f"{n} tic-tac-toe episodes, concurrency {c}, scripted model server in a child process, median of {args.repeats}"
    )
    print(f"{'variant':<26} {'episodes/s':>11} {'CPU ms/episode':>15} {'eps/s ratio':>12} {'CPU ratio':>10}")
    for name, samples in results.items():
        eps = n / statistics.median(w for w, _ in samples)
        cpu = statistics.median(c_ for _, c_ in samples) / n
        print(f"{name:<26} {eps:>11.1f} {cpu * 1000:>15.2f} {eps / base_eps:>12.2f} {cpu / base_cpu:>10.2f}")


if __name__ == "__main__":
    main()
