"""vLLM's prefix cache as the benchmarks read it: its counters from `/metrics`, and the most a cache of whole
blocks could serve of the prompts in a set of records (the ceiling a hit rate is judged against)."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

CACHE_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def scrape(root_url: str) -> tuple[dict[str, float], str | None]:
    """The prefix-cache counters (summed over label sets) and the server's block size, from `/metrics`."""
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    totals = dict.fromkeys(CACHE_COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    block = re.search(r'cache_config_info\{[^}]*block_size="(\d+)"', text)
    return totals, block.group(1) if block else None


def prefix_cache_counters(root_url: str) -> dict[str, float]:
    """The prefix-cache counters alone."""
    return scrape(root_url)[0]


def cache_delta(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(queried tokens, hit tokens) between two readings of the counters, all clients of the server."""
    queries, hits = (after[name] - before[name] for name in CACHE_COUNTERS)
    return queries, hits


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Hits over queries between two readings of the counters; None: nothing was queried."""
    queries, hits = cache_delta(before, after)
    return hits / queries if queries else None


def cacheable_share(records: list[dict[str, Any]], block_size: int) -> float:
    """The most of the policy's prompt tokens a prefix cache of whole `block_size` blocks could serve.

    Per call, the part of its prompt that an earlier call already sent (the episode's previous prompt and
    completion, or for the first call the opening every episode of the task shares), cut down to whole
    blocks: vLLM only reuses full blocks. Computed from the ledger's exact lengths (tito: one segment).
    """
    cacheable = total = 0
    for record in records:
        previous_end = None
        for call in record["trajectory"]["calls"]:
            prompt = call["prompt_len"]
            shared = prompt if previous_end is None else min(previous_end, prompt)
            cacheable += shared // block_size * block_size
            total += prompt
            previous_end = prompt + call["completion_len"]
    return cacheable / total if total else 0.0
