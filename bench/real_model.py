"""Tic-tac-toe episodes on the real default model (local vLLM): where an episode's time goes, token exactness,
and vLLM's prefix-cache hit rate, in chat mode and in token-in-token-out mode.

    .venv/bin/sparring models up          # once (or pass --base-url/--model/--tokenizer)
    .venv/bin/python bench/real_model.py [--episodes 3] [--max-turns 3]

Per mode it plays one warm-up episode (not measured: it loads the tokenizer and warms vLLM), then
`--episodes` episodes one after another, and prints per episode: wall time, time inside model calls,
our own time (wall minus model), our process CPU, prefix mismatches and segments; and over the mode:
vLLM's prefix-cache hit rate from the difference of its /metrics counters before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace
from typing import Any

from vllm_cache import hit_rate, prefix_cache_counters

from sparring.core.settings import EpisodeSettings
from sparring.engine.engine import Engine
from sparring.engine.settings import default_settings


async def play_mode(engine: Engine, settings: EpisodeSettings, episodes: int, root_url: str) -> list[dict[str, Any]]:
    """One warm-up episode, then `episodes` measured ones; each row gets our CPU time."""
    await engine.play({}, settings=settings)
    before = prefix_cache_counters(root_url)
    rows = []
    for _ in range(episodes):
        cpu = time.process_time()
        record = await engine.play({}, settings=settings)
        record["cpu_s"] = time.process_time() - cpu
        rows.append(record)
    rate = hit_rate(before, prefix_cache_counters(root_url))
    for row in rows:
        row["cache_hit_rate"] = float("nan") if rate is None else rate
    return rows


def report(mode: str, rows: list[dict[str, Any]]) -> None:
    """Per-episode lines and the mode's medians."""
    print(f"\n== token mode {mode} ==")
    print(
        f"{'status':>10} {'calls':>5} {'wall s':>7} {'model s':>8} {'ours ms':>8} {'ours %':>7} {'cpu ms':>7} "
        f"{'segments':>8} {'mismatch':>8}"
    )
    for r in rows:
        t = r["timing"]
        ours = t["wall_s"] - t["model_s"]
        print(
            f"{r['stop_reason']:>10} {r['num_policy_calls'] + r['num_user_calls']:>5} {t['wall_s']:>7.2f} "
            f"{t['model_s']:>8.2f} {ours * 1e3:>8.1f} {100 * ours / t['wall_s']:>6.2f}% {r['cpu_s'] * 1e3:>7.1f} "
            f"{len(r['trajectory']['segments']):>8} {r['trajectory']['prefix_mismatches']:>8}"
        )
    share = statistics.median((r["timing"]["wall_s"] - r["timing"]["model_s"]) / r["timing"]["wall_s"] for r in rows)
    cpu_share = statistics.median(r["cpu_s"] / r["timing"]["wall_s"] for r in rows)
    mismatches = statistics.mean(r["trajectory"]["prefix_mismatches"] for r in rows)
    print(
        f"median our share of wall time: {100 * share:.2f}% (our CPU: {100 * cpu_share:.2f}% of wall); "
        f"prefix mismatches per episode: {mismatches:.2f}; "
        f"vLLM prefix-cache hit rate over these episodes: {100 * rows[0]['cache_hit_rate']:.1f}%"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-turns", type=int, default=3)
    parser.add_argument("--base-url", help="default: the server `sparring models up` started")
    parser.add_argument("--model")
    parser.add_argument("--tokenizer", help="the model's local folder (for tito)")
    args = parser.parse_args()
    if args.base_url:
        base_url, model, tokenizer = args.base_url, args.model or "policy", args.tokenizer
    else:
        from sparring.models.local import local_endpoints

        local = local_endpoints().get("policy")
        if local is None:
            raise SystemExit("no local model server: run `.venv/bin/sparring models up` or pass --base-url")
        base_url, model, tokenizer = local["base_url"], local["model"], args.tokenizer or local["model_path"]
    config = replace(
        default_settings("tictactoe"),
        policy_base_urls=[base_url],
        user_base_urls=[base_url],
        policy_model=model,
        user_model=model,
        policy_tokenizer=tokenizer,
        max_turns=args.max_turns,
        policy_max_tokens=96,
        user_max_tokens=64,
        request_timeout_s=300,
    )
    root_url = base_url.removesuffix("/v1")
    print(f"server {base_url}, model {model}, {args.episodes} episodes per mode, max_turns {args.max_turns}")
    engine = Engine(config, env="tictactoe")
    try:
        for mode in ("chat", "tito"):
            report(mode, await play_mode(engine, replace(config, token_mode=mode), args.episodes, root_url))
    finally:
        await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
