"""Where a GRPO step's time goes with the real trainer in the loop, and what one step of staleness buys.

    .venv/bin/python bench/grpo_step.py                       # starts a LoRA vLLM server, 2 x 4 steps (~12 min)
    .venv/bin/python bench/grpo_step.py --steps 6 --base-url http://127.0.0.1:8000/v1   # `models up --lora 16`
    .venv/bin/python bench/grpo_step.py --from runs/grpo/steps.jsonl                    # a finished run's steps

Runs `examples/train_grpo.py`'s training (TRL GRPOTrainer + LoRA on the default model, sparring playing the
episodes on vLLM's CPU build, the adapter pushed before each step's episodes) twice on the same positions:
- `ahead 0`: each step plays its episodes, then trains on them (on-policy);
- `ahead 1`: the episodes of step n+1 are played while step n trains (one step stale; every token's version
  is recorded, so `staleness` below is measured, not assumed).

Per step it prints the rollout time the trainer waited for, the adapter push (save + load into vLLM), the
training (forward, backward, optimizer: the rest of the step), and the step's wall time; then the medians
without the first step (model warm-up) and the saving of `ahead 1`. On 2 cores both sides compete for the
same cores, so the overlap can only win back idle time (HTTP waits, Python, saves), not run them in parallel.
Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("rollout_wait_s", "push_s", "train_s", "step_s")


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("train_grpo", ROOT / "examples" / "train_grpo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_grpo"] = module
    spec.loader.exec_module(module)
    return module


def table(name: str, steps: list[dict[str, Any]]) -> dict[str, float]:
    """Print the steps and return the medians without the first step."""
    print(f"\n{name}")
    print(f"{'step':>4} {'rollout wait':>13} {'push':>7} {'train':>8} {'step':>8} {'reward':>7} {'staleness':>10}")
    for s in steps:
        stale = sorted(set(s.get("staleness") or [])) or "-"
        reward = "-" if s["reward"] is None else f"{s['reward']:.2f}"
        print(
            f"{s['step']:>4} {s['rollout_wait_s']:>12.1f}s {s['push_s']:>6.1f}s {s['train_s']:>7.1f}s "
            f"{s['step_s']:>7.1f}s {reward:>7} {stale!s:>10}"
        )
    warm = steps[1:] or steps
    medians = {key: statistics.median(s[key] for s in warm) for key in COLUMNS}
    shares = ", ".join(f"{key.removesuffix('_s')} {100 * medians[key] / medians['step_s']:.0f}%" for key in COLUMNS[:3])
    print(
        "median (without step 1): "
        + ", ".join(f"{key.removesuffix('_s')} {value:.1f} s" for key, value in medians.items())
        + f"  ->  {shares}"
    )
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per variant")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-grpo"))
    parser.add_argument("--base-url", default=None, help="a running `sparring models up --lora 16` server")
    parser.add_argument("--from", dest="source", type=Path, default=None, help="only print a run's steps.jsonl")
    args = parser.parse_args()
    if args.source is not None:
        table(str(args.source), [json.loads(line) for line in args.source.read_text().splitlines()])
        return 0

    example = load_example()
    train_tasks, _ = example.split_tasks(example.win_in_one_tasks(), example.RunConfig().eval_positions)
    medians = {}
    with example.lora_server(16, args.base_url) as server:
        for ahead in (0, 1):
            config = example.RunConfig(steps=args.steps, groups=args.groups, generations=args.generations, ahead=ahead)
            out = args.out / f"ahead{ahead}"
            out.mkdir(parents=True, exist_ok=True)
            steps, _, _ = example.train(server, train_tasks, out, config, progress=lambda line: None)
            medians[ahead] = table(f"ahead {ahead} ({'one step stale' if ahead else 'on-policy'})", steps)
    saved = medians[0]["step_s"] - medians[1]["step_s"]
    print(
        f"\none step of staleness: {medians[0]['step_s']:.1f} s -> {medians[1]['step_s']:.1f} s per step "
        f"({saved:+.1f} s, {100 * saved / medians[0]['step_s']:+.0f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
