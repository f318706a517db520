"""Benchmark: vLLM's prefix-cache hit rate on 5-turn tic-tac-toe episodes, per role (issue 16's benchmark 2).

Against a running real server (`sparring models up`, or one started with `--block-size B`; add
`--extra-args "--enable-prompt-tokens-details"` for per-request figures). Plays one warm-up episode, then
`--episodes` at `--concurrency` in tito mode, and prints:
- per role, cached / prompt tokens over the run's calls, from each reply's
  `usage.prompt_tokens_details.cached_tokens` (immune to other clients of the server; needs the flag above);
- vLLM's own `/metrics` counters over the run (prefix-cache hits / queries, every client of the server);
- the ceiling whole blocks allow for the policy: per call, the part of its prompt the episode's previous
  call already sent (its prompt and completion), cut to whole blocks of 1, 16, 32, 64 and 128 tokens;
- the server's block size (`vllm:cache_config_info`), statuses, segments and prefix mismatches.

    .venv/bin/python bench/prefix_cache.py --base-url http://127.0.0.1:8000/v1 [--episodes 8] [--concurrency 8]

With `--base-url` twice (two replicas of the model), policy and user calls are routed over both by `--routing`
(sparring's sticky least-loaded, or rendezvous hashing), the warm-up is one episode per replica played together,
and the counters are summed over the replicas (issue 16's benchmark 3 on real servers: the cache hit rate that
routing keeps).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from vllm_cache import cacheable_share, hit_rate, scrape

from sparring import Engine, EpisodeSettings
from sparring.envs.tictactoe import TicTacToe
from sparring.models.transport import Reply


class UsageLog:
    """Prompt and cached tokens of every generation reply, by the model the request named."""

    def __init__(self, policy_model: str) -> None:
        self.policy_model = policy_model
        self.calls: list[tuple[str, int, int | None]] = []
        self.on = False

    def wrap(self, post: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
        async def logged(path: str, payload: bytes, **kwargs: Any) -> Reply:
            reply = await post(path, payload, **kwargs)
            if self.on and not path.endswith("/render") and reply.status == 200:
                usage = orjson.loads(reply.body).get("usage") or {}
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                role = "policy" if orjson.loads(payload).get("model") == self.policy_model else "user"
                self.calls.append((role, int(usage.get("prompt_tokens") or 0), cached))
            return reply

        return logged


async def main_async(args: argparse.Namespace) -> None:
    urls = args.base_url or ["http://127.0.0.1:8000/v1"]
    roots = [url.removesuffix("/").removesuffix("/v1") for url in urls]
    env = TicTacToe()
    settings = EpisodeSettings(
        **{
            **env.settings,
            "policy_base_urls": urls,
            "user_base_urls": urls,
            "routing": args.routing,
            "policy_model": args.policy_model,
            "user_model": args.user_model,
            "token_mode": "tito",
            "max_turns": args.max_turns,
            "request_timeout_s": 1800,
        }
    )
    engine = Engine(settings)
    log = UsageLog(args.policy_model)
    policy, user = engine.clients.clients(settings)
    for transport in {id(c.transport): c.transport for c in (policy, user)}.values():
        transport.post = log.wrap(transport.post)  # type: ignore[method-assign]
    try:
        # the opening every episode shares is cached from here on (on each replica, when they are split evenly)
        await asyncio.gather(*(engine.play({}, episode_id=f"warm-up-{i}") for i in range(len(urls))))
        log.on = True
        before, block = summed(roots)
        slots = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> dict[str, Any]:
            async with slots:
                return await engine.play({}, episode_id=f"prefix-{i}")

        started = time.perf_counter()
        records = await asyncio.gather(*(one(i) for i in range(args.episodes)))
        wall = time.perf_counter() - started
        after, _ = summed(roots)
    finally:
        await engine.aclose()
    print(
        f"{len(urls)} replica(s), routing {args.routing}; block size {block}, {len(records)} episodes in {wall:.0f} s: "
        f"{sorted({r['status'] for r in records})}"
    )
    print(
        f"segments {sum(len(r['trajectory']['segments']) for r in records)}, "
        f"prefix mismatches {sum(r['trajectory']['prefix_mismatches'] for r in records)}"
    )
    for role in ("policy", "user"):
        calls = [c for c in log.calls if c[0] == role]
        prompt = sum(c[1] for c in calls)
        if calls and all(c[2] is not None for c in calls):
            cached = sum(c[2] or 0 for c in calls)
            print(f"{role}: {len(calls)} calls, hit rate {cached / prompt:.1%} ({cached} of {prompt} prompt tokens)")
        else:
            print(
                f"{role}: {len(calls)} calls, no per-request cached_tokens (start vLLM with "
                "--enable-prompt-tokens-details)"
            )
    rate = hit_rate(before, after)
    if rate is not None:
        print(f"vLLM /metrics over the run (all clients): hit rate {rate:.1%}")
    ceilings = ", ".join(f"{b}: {cacheable_share(records, b):.1%}" for b in (1, 16, 32, 64, 128))
    print(f"policy ceiling of whole blocks: {ceilings}")


def summed(roots: list[str]) -> tuple[dict[str, float], str | None]:
    """The prefix-cache counters summed over the replicas, and the first one's block size."""
    readings = [scrape(root) for root in roots]
    totals = {name: sum(counters[name] for counters, _ in readings) for name in readings[0][0]}
    return totals, readings[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", action="append", help="a replica's URL (.../v1); twice for two replicas")
    parser.add_argument("--routing", choices=("least_loaded", "rendezvous"), default="least_loaded")
    parser.add_argument("--policy-model", default="policy")
    parser.add_argument("--user-model", default="user")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-turns", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
