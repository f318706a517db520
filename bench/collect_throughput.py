"""Benchmark 3: tokens generated per second through `sparring collect` vs a plain load, on the real model.

Against the vLLM server `sparring models up` started, in one run:
1. `sparring collect` (a real subprocess, tito mode) of EPISODES tic-tac-toe episodes at concurrency C;
   generated tokens = every completion token of both roles (from the records' usage), over its wall time.
   vLLM's prefix-cache hit rate over those episodes comes from the difference of its /metrics counters.
2. A plain load: C independent workers (aiohttp) sending chat requests back to back, for about as long as
   the collection took, each generating the episodes' mean completion length from a distinct prompt as
   long as the mean part of an episode's prompt that vLLM had to compute (prompt tokens minus cache
   hits): the same prefill and decode work per request, without the episodes around it.
The ratio (1) / (2) says how much of the server's throughput the episode machinery keeps. It also
prints, from the records' exact ids, the most of the policy's prompt tokens a cache of whole blocks of
16, 32 and 128 tokens could serve (vLLM's CPU default is 128): whether block size caps the hit rate.
/metrics counts every client of the server, and the server is CPU-bound: run it while nobody else uses
the server or the machine, or both the ratio and the hit rate mix in their traffic.

    .venv/bin/python bench/collect_throughput.py [--episodes 8] [--concurrency 8] [--max-turns 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from vllm_cache import cache_delta, cacheable_share, prefix_cache_counters

from sparring.models.local import local_endpoints


async def run_collect(base_url: str, model: str, tokenizer: str, args: argparse.Namespace, work: Path) -> dict:
    """One `sparring collect` subprocess; its generated tokens, wall time and the prefix-cache hit rate."""
    tasks = work / "tasks.jsonl"
    tasks.write_text("{}\n" * args.episodes)
    output = work / "out.jsonl"
    root = base_url.removesuffix("/v1")
    before = prefix_cache_counters(root)
    command = [sys.executable, "-m", "sparring.cli", "collect", "--input", str(tasks), "--output", str(output)]
    command += ["--concurrency", str(args.concurrency), "--max-turns", str(args.max_turns), "--quiet"]
    command += ["--token-mode", "tito", "--policy-tokenizer", tokenizer, "--timeout", "600"]
    for role in ("policy", "user"):
        command += [f"--{role}-base-url", base_url, f"--{role}-model", model]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*command)
    await process.wait()
    wall = time.perf_counter() - started
    after = prefix_cache_counters(root)
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    completion = sum(r["usage"][role]["completion_tokens"] for r in records for role in ("policy", "user"))
    calls = sum(r["num_policy_calls"] + r["num_user_calls"] for r in records)
    prompt = sum(r["usage"][role]["prompt_tokens"] for r in records for role in ("policy", "user"))
    queries, hits = cache_delta(before, after)
    return {
        "policy_cacheable_by_block_size": {str(b): cacheable_share(records, b) for b in (16, 32, 128)},
        "exit_code": process.returncode,
        "episodes": len(records),
        "statuses": sorted({r["status"] for r in records}),
        "turns": sum(r["num_turns"] for r in records),
        "calls": calls,
        "completion_tokens": completion,
        "mean_prompt_tokens": prompt / calls if calls else 0,
        "mean_completion_tokens": completion / calls if calls else 0,
        "wall_s": wall,
        "tokens_per_s": completion / wall,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "mean_uncached_prompt_tokens": (queries - hits) / calls if calls else 0,
        "prefix_cache_queries": queries,
        "prefix_mismatches": sum(r["trajectory"]["prefix_mismatches"] for r in records),
    }


async def plain_load(base_url: str, model: str, concurrency: int, prompt_tokens: int, max_tokens: int, seconds: float):
    """C workers sending independent chat requests back to back for `seconds`; generated tokens per second."""
    words = max(prompt_tokens // 2, 1)  # about 2 tokens per "wordN " piece for Qwen's tokenizer
    generated = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal generated
        request = 0
        while time.perf_counter() < deadline:
            # a distinct prompt per request: no prefix-cache help beyond the chat template's first block
            text = f"Request {index}-{request}. " + " ".join(
                f"w{(index * 7919 + request + i) % 997}" for i in range(words)
            )
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens,
                "min_tokens": max_tokens,
                "temperature": 1.0,
            }
            async with session.post(f"{base_url}/chat/completions", json=body) as response:
                data = await response.json()
            generated += data["usage"]["completion_tokens"]
            request += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    return {"completion_tokens": generated, "wall_s": wall, "tokens_per_s": generated / wall}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--plain-seconds", type=float, help="length of the plain load (default: the collection's)")
    args = parser.parse_args()
    local = local_endpoints()
    if "policy" not in local:
        sys.exit("no local vLLM server: start one with `sparring models up`")
    base_url, model, tokenizer = local["policy"]["base_url"], local["policy"]["model"], local["policy"]["model_path"]
    with tempfile.TemporaryDirectory() as work:
        collected = await run_collect(base_url, model, tokenizer, args, Path(work))
    print("collect:", orjson.dumps(collected).decode(), flush=True)
    plain = await plain_load(
        base_url,
        model,
        args.concurrency,
        int(collected["mean_uncached_prompt_tokens"]),
        max(round(collected["mean_completion_tokens"]), 1),
        args.plain_seconds or collected["wall_s"],
    )
    print("plain load:", orjson.dumps(plain).decode())
    bounds = ", ".join(f"{v:.1%} with blocks of {b}" for b, v in collected["policy_cacheable_by_block_size"].items())
    print(
        f"collect {collected['tokens_per_s']:.1f} generated tokens/s vs plain load {plain['tokens_per_s']:.1f} "
        f"at concurrency {args.concurrency}: {collected['tokens_per_s'] / plain['tokens_per_s']:.0%}; "
        f"prefix-cache hit rate over the episodes {collected['prefix_cache_hit_rate']:.1%} "
        f"({collected['prefix_mismatches']} prefix mismatches); whole blocks only: at most {bounds} "
        "of the policy's prompt tokens can come from the cache"
    )


if __name__ == "__main__":
    asyncio.run(main())
