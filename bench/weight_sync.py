"""Benchmark: what weight updates during a collection cost (issue 16's benchmark 1).

Plays the same episodes twice at `--concurrency`: once without updates, once with a weight update every
`--every` seconds (pause in `--mode`, update: a version, plus a LoRA adapter load with `--lora`, resume),
through `engine.weights` as a trainer would. Printed per run: wall time, generated tokens per second (policy
and user completion tokens, from the records), statuses, episodes lost (asked for but no record); for the
run with updates, each step's time (median and max over the updates) and how many policy calls were
resumed after an abort. The ratio of the two runs' tokens/s is the figure of merit (goal: >= 0.90, lost 0).

Default: the scripted vLLM-shaped server in a child process (`--token-latency` s per token,
`--max-num-seqs` requests at once), so the figures measure sparring's side of the protocol. With
`--policy-base-url URL` (and `--model-dir DIR` for `--lora`: the adapter is made there with peft) the
same against a real vLLM started by `sparring models up --lora`; both roles then use that server.

    .venv/bin/python bench/weight_sync.py [--episodes 64] [--concurrency 8] [--every 2] [--mode keep] [--lora]
    .venv/bin/python bench/weight_sync.py --policy-base-url http://127.0.0.1:8000/v1 --model-dir DIR \
        --episodes 16 --every 20 --lora
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sparring import Engine, EpisodeSettings
from sparring.engine.batch import BatchItem, BatchRunner
from sparring.testing import FakeModelProcess


def make_adapter(args: argparse.Namespace, folder: Path, index: int) -> str:
    """A LoRA adapter folder for update `index`: a real one (peft) for vLLM, a stand-in for the scripted server."""
    path = folder / f"step-{index}"
    if args.policy_base_url:
        from sparring.testing.lora import make_adapter as real_adapter

        return str(real_adapter(args.model_dir, path, seed=index))
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return str(path)


async def updater(engine: Engine, args: argparse.Namespace, folder: Path, stop: asyncio.Event) -> dict[str, Any]:
    """Every `--every` seconds: pause, update (version, adapter), resume; the time of each step."""
    steps: dict[str, list[float]] = {"pause": [], "update": [], "resume": [], "total": []}
    index = 0
    while True:
        try:
            await asyncio.wait_for(stop.wait(), args.every)
            break
        except TimeoutError:
            pass
        index += 1
        adapter = make_adapter(args, folder, index) if args.lora else None
        started = time.perf_counter()
        await engine.weights.pause(args.mode)
        paused = time.perf_counter()
        await engine.weights.update(str(args.first_version + index), adapter)
        updated = time.perf_counter()
        await engine.weights.resume()
        resumed = time.perf_counter()
        steps["pause"].append(paused - started)
        steps["update"].append(updated - paused)
        steps["resume"].append(resumed - updated)
        steps["total"].append(resumed - started)
    return {"updates": index, "steps": steps}


async def one_run(args: argparse.Namespace, policy_url: str, user_url: str, *, updates: bool) -> dict[str, Any]:
    settings = EpisodeSettings(
        policy_base_urls=[policy_url],
        user_base_urls=[user_url],
        policy_model=args.model,
        user_model=args.model,
        token_mode="tito",
        user_tool_choice="required",
        policy_max_tokens=args.policy_max_tokens,
        user_max_tokens=args.user_max_tokens,
        max_turns=args.max_turns,
        request_timeout_s=1800,
    )
    engine = Engine(settings)
    runner = BatchRunner(engine, concurrency=args.concurrency)
    items = [BatchItem(i, 0, {}, "tictactoe") for i in range(args.episodes)]
    stop = asyncio.Event()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        sync = asyncio.create_task(updater(engine, args, Path(scratch), stop)) if updates else None
        started = time.perf_counter()
        try:
            async for record in runner.run(items):
                records.append(record)
        finally:
            wall = time.perf_counter() - started
            stop.set()
            report = await sync if sync is not None else None
            await runner.aclose()
    tokens = sum(
        (r.get("usage") or {}).get(role, {}).get("completion_tokens", 0) for r in records for role in ("policy", "user")
    )
    statuses: dict[str, int] = {}
    for r in records:
        key = f"{r['status']}/{r['stop_reason']}"
        statuses[key] = statuses.get(key, 0) + 1
    resumed = sum(c["resumed"] for r in records for c in (r.get("trajectory") or {}).get("calls", ()))
    versions = sorted({v for r in records for v in ((r.get("weight_versions") or {}).get("set") or ())}, key=len)
    return {
        "updates": updates,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "lost": args.episodes - len({r["id"] for r in records}),
        "statuses": statuses,
        "resumed_calls": resumed,
        "versions_seen": len(versions),
        "sync": report,
    }


def show(run: dict[str, Any]) -> None:
    label = "with updates" if run["updates"] else "no updates  "
    print(
        f"{label} wall {run['wall_s']:7.1f} s  tokens {run['tokens']:7d}  {run['tokens_per_s']:8.1f} tok/s  "
        f"lost {run['lost']}  resumed calls {run['resumed_calls']}  versions {run['versions_seen']}  {run['statuses']}",
        flush=True,
    )
    if run["sync"]:
        steps = run["sync"]["steps"]
        parts = [
            f"{name} median {statistics.median(values) * 1000:.1f} ms max {max(values) * 1000:.1f} ms"
            for name, values in steps.items()
            if values
        ]
        print(f"  {run['sync']['updates']} updates: " + "; ".join(parts), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    if args.policy_base_url:
        urls = (args.policy_base_url, args.policy_base_url)
        runs = []
        for updates in (False, True):
            runs.append(await one_run(args, *urls, updates=updates))
            show(runs[-1])
    else:
        with (
            FakeModelProcess(token_latency_s=args.token_latency, max_num_seqs=args.max_num_seqs) as policy,
            FakeModelProcess() as user,
        ):
            runs = []
            for updates in (False, True):
                runs.append(await one_run(args, policy.base_url, user.base_url, updates=updates))
                show(runs[-1])
    if not runs[0]["tokens_per_s"]:
        raise SystemExit("no tokens were generated without updates (see the statuses above): no ratio to give")
    print(f"tokens/s with updates / without: {runs[1]['tokens_per_s'] / runs[0]['tokens_per_s']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between updates")
    parser.add_argument("--mode", choices=["keep", "wait", "abort"], default="keep")
    parser.add_argument("--lora", action="store_true", help="each update also loads a new LoRA adapter")
    parser.add_argument("--policy-base-url", help="a real vLLM server (both roles); default: scripted servers")
    parser.add_argument("--model", default="policy", help="served model name (default: policy)")
    parser.add_argument("--model-dir", help="the model's folder, to make adapters for a real server")
    parser.add_argument("--first-version", type=int, default=int(time.time()), help="versions count up from here")
    parser.add_argument("--token-latency", type=float, default=0.002, help="scripted server: seconds per token")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="scripted server: requests at once")
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--policy-max-tokens", type=int, default=96)
    parser.add_argument("--user-max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.lora and args.policy_base_url and not args.model_dir:
        parser.error("--lora with --policy-base-url needs --model-dir (to make the adapters)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
