"""Benchmark: sticky least-loaded routing against rendezvous hashing, two scripted replicas, skewed episodes.

Two policy replicas, each a scripted vLLM-shaped server in its own process that generates one token per
`--token-latency` seconds and runs at most `--max-num-seqs` requests at once (more wait in its queue, which
its /metrics report, as vLLM's do); the simulated user runs on a third server. A quarter of the episodes
are long (`--long-turns` turns of `--long-tokens`-token replies), the rest short (one turn of
`--short-tokens` tokens). `collect` plays them at `--concurrency`, once per routing, alternating the order
over `--rounds` rounds (one machine, shared: compare the two within a round). Printed per run: wall time,
and episodes per replica (from the metrics file).

    .venv/bin/python bench/routing.py [--episodes 96] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from sparring import CollectSpec, EpisodeSettings, collect
from sparring.testing.responders import ModelRequest, Say

LONG = "LONG"


class LengthByTask:
    """Replies with many tokens in episodes whose opening says LONG, else few."""

    def __init__(self, long_tokens: int, short_tokens: int) -> None:
        self.long_tokens = long_tokens
        self.short_tokens = short_tokens

    def __call__(self, request: ModelRequest) -> Say:
        long = any(LONG in str(m.get("content")) for m in request.messages[:2])
        words = self.long_tokens if long else self.short_tokens
        return Say("ab" * max(1, words // 2))  # the scripted tokenizer: one token per byte


def serve(args: argparse.Namespace) -> None:
    """One scripted server (a child process of the benchmark): print its base URL, serve until killed."""
    from sparring.testing import FakeModelServer

    async def run() -> None:
        responders: dict[str, Any] = {
            "policy": LengthByTask(args.long_tokens, args.short_tokens),
            "user": Say("go on"),
        }
        async with FakeModelServer(
            responders, token_latency_s=args.token_latency, max_num_seqs=args.max_num_seqs, record=False
        ) as server:
            print(server.base_url, flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


def start(args: argparse.Namespace, *, token_latency: float) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        __file__,
        "--serve",
        "--token-latency",
        str(token_latency),
        "--max-num-seqs",
        str(args.max_num_seqs),
        "--long-tokens",
        str(args.long_tokens),
        "--short-tokens",
        str(args.short_tokens),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def tasks(path: Path, episodes: int, long_turns: int) -> None:
    rows = []
    for i in range(episodes):
        long = i % 4 == 0
        opening = f"{LONG} game {i}" if long else f"game {i}"
        rows.append(
            {
                "id": f"t{i}",
                "messages": [{"role": "system", "content": opening}, {"role": "user", "content": "your move"}],
                "limits": {"max_turns": long_turns if long else 1},
            }
        )
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


async def one_run(
    routing: str, replicas: list[str], user: str, task_file: Path, out: Path, concurrency: int
) -> dict[str, Any]:
    settings = EpisodeSettings(
        policy_base_urls=replicas,
        user_base_urls=[user],
        routing=routing,  # type: ignore[arg-type]
        request_timeout_s=600,
        max_retries=0,
    )
    started = time.perf_counter()
    result = await collect(CollectSpec(input=task_file, output=out, settings=settings, concurrency=concurrency))
    wall = time.perf_counter() - started
    per_replica = result.metrics["replicas"]["policy"]
    return {
        "routing": routing,
        "wall_s": wall,
        "episodes": [per_replica[url]["episodes"] for url in replicas],
        "failed": result.failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--episodes", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--token-latency", type=float, default=0.004)
    parser.add_argument("--max-num-seqs", type=int, default=2)
    parser.add_argument("--long-turns", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=120)
    parser.add_argument("--short-tokens", type=int, default=8)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    processes = []
    try:
        replicas = []
        for _ in range(2):
            process, url = start(args, token_latency=args.token_latency)
            processes.append(process)
            replicas.append(url)
        process, user = start(args, token_latency=0.0)
        processes.append(process)
        runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as scratch:
            task_file = Path(scratch) / "tasks.jsonl"
            tasks(task_file, args.episodes, args.long_turns)
            for round_index in range(args.rounds):
                order = ["least_loaded", "rendezvous"] if round_index % 2 == 0 else ["rendezvous", "least_loaded"]
                for routing in order:
                    out = Path(scratch) / f"{routing}-{round_index}.jsonl"
                    run = asyncio.run(one_run(routing, replicas, user, task_file, out, args.concurrency))
                    run["round"] = round_index
                    runs.append(run)
                    print(
                        f"round {round_index} {routing:12s} wall {run['wall_s']:6.2f} s  episodes per replica "
                        f"{run['episodes']}  failed {run['failed']}",
                        flush=True,
                    )
        for routing in ("least_loaded", "rendezvous"):
            walls = [r["wall_s"] for r in runs if r["routing"] == routing]
            print(f"{routing:12s} median wall {statistics.median(walls):.2f} s over {len(walls)} runs")
        ratios = [
            next(r for r in runs if r["round"] == i and r["routing"] == "rendezvous")["wall_s"]
            / next(r for r in runs if r["round"] == i and r["routing"] == "least_loaded")["wall_s"]
            for i in range(args.rounds)
        ]
        print(f"rendezvous / least_loaded wall time, per round: {', '.join(f'{x:.2f}' for x in ratios)}")
    finally:
        for process in processes:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
