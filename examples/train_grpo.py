"""Train the default model with TRL's GRPOTrainer on episodes sparring plays on vLLM's CPU build.

    .venv/bin/python examples/train_grpo.py --out runs/grpo            # the run in docs/trainers.md
    .venv/bin/python examples/train_grpo.py --out runs/short --steps 2 --groups 1 --generations 2 \\
        --eval-positions 4                                               # the mechanics, a few minutes

What happens:
- a vLLM server (CPU build, the default Qwen2.5-Coder-0.5B-Instruct) starts with runtime LoRA and the weight
  sync endpoints (`sparring models up --lora --max-lora-rank 16` does the same by hand; `--base-url` uses one
  already up);
- the tasks are tic-tac-toe "win in one" positions (`sparring.envs.tictactoe.win_in_one_tasks`): X to move,
  exactly one winning cell, one move per episode, reward 1 for the win and 0 otherwise (the environment's own
  verifier). They are split by symmetry class, so no held-out position is a mirror image of a trained one;
- before training, the held-out positions are played once each by the base model (`collect`, the same call
  before and after; only the policy's model name differs);
- TRL's `GRPOTrainer` trains a LoRA adapter on CPU. Its `rollout_func` is `SparringRollout`: before each
  step's episodes it saves the adapter and loads it into vLLM through `engine.weights` (a new version per
  optimizer step), so every policy call samples from the adapter of the step before and records that
  version; the simulated user (O) stays the base model;
- after training the final adapter is loaded and the held-out positions are played again. The script writes
  `summary.json` (before / after mean reward with 95% bootstrap intervals, paired difference, time per step),
  `steps.jsonl` (reward and time per step), `curve.png`, and every record (`train.jsonl`, `before.jsonl`,
  `after.jsonl`).

Why win-in-one positions: one decision per episode (a ~20-token constrained tool call), so a step's 16
episodes take seconds and its training sequences are ~400 tokens; the reward is not noised by the opponent's
play; a random legal move wins 20-33% of them, so GRPO groups have mixed rewards; and "read the board, complete
the line" is a skill a 0.5B model can move in tens of steps. The full game's reward depends mostly on O's
sampled moves, and the calendar's all-or-nothing reward is ~0 for this model.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring import CollectSpec, Engine, EpisodeSettings, collect
from sparring.envs.tictactoe import TicTacToe, win_in_one_tasks
from sparring.integrations.trl import SparringRollout, sparring_reward, task_prompts
from sparring.models.local import HOST, ROLES, ServerOptions, ServerRecord, free_port, start_server, stop_server

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the run (written to summary.json)."""

    steps: int = 16
    groups: int = 2
    """Positions per optimizer step."""
    generations: int = 8
    """Episodes per position: one GRPO group (of 4, over half the groups were all losses: no gradient)."""
    micro_batch: int = 1
    """Rows per forward/backward: 1 keeps the trainer near 3 GB (4 rows reached 5.5 GB, and beside other vLLM
    servers on a 24 GiB machine the kernel's OOM killer ended it)."""
    learning_rate: float = 4e-4
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = tuple(LORA_TARGETS)
    policy_max_tokens: int = 48
    temperature: float = 1.0
    eval_positions: int = 64
    eval_repeats: int = 2
    """Episodes per held-out position, before and after (2 x 68 resolves a change of about 0.1)."""
    concurrency: int = 16
    ahead: int = 0
    seed: int = 0
    train_minutes: float | None = None
    """Stop training after the first step that ends past this many minutes (the evaluation still runs)."""


# -- tasks ------------------------------------------------------------------------------------------------


def split_tasks(tasks: Sequence[Mapping[str, Any]], held_out: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): whole symmetry classes, taken in the order of their hash until `held_out` positions.

    Fixed by the task set alone (no seed), so every run holds out the same positions and never trains on them.
    """
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task in tasks:
        by_class[task["env_seed"]["symmetry_class"]].append(dict(task))
    order = sorted(by_class, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    test: list[dict[str, Any]] = []
    taken = set()
    for name in order:
        if len(test) >= held_out:
            break
        test += by_class[name]
        taken.add(name)
    train = [dict(t) for t in tasks if t["env_seed"]["symmetry_class"] not in taken]
    return train, test


# -- the model server -------------------------------------------------------------------------------------


@contextmanager
def lora_server(
    rank: int, base_url: str | None = None, progress: Callable[[str], None] = print
) -> Iterator[ServerRecord]:
    """A vLLM server with runtime LoRA and weight sync: started here (and stopped at the end), or `base_url`'s."""
    if base_url is not None:
        yield existing_server(base_url)
        return
    record = start_server(
        None,
        ROLES,
        free_port(),
        ServerOptions(lora=True, max_lora_rank=rank),
        lambda message, transient=False: None if transient else progress(message),
    )
    try:
        yield record
    finally:
        stop_server(record)


def server_at(base_url: str, model: str, model_path: str) -> ServerRecord:
    """A server started elsewhere (e.g. by a test), by its URL, served model name and model folder."""
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    return ServerRecord(
        roles=list(ROLES), model=model, model_path=model_path, port=port, pid=0, log_path="", started_at=0.0
    )


def existing_server(base_url: str) -> ServerRecord:
    """A running server (`sparring models up --lora --max-lora-rank RANK`) as a record: its model and folder."""
    from sparring.models.local import local_endpoints

    for endpoint in local_endpoints().values():
        if endpoint["base_url"].rstrip("/") == base_url.rstrip("/"):
            return server_at(base_url, endpoint["model"], endpoint["model_path"])
    raise SystemExit(f"no server of `sparring models up` answers at {base_url} (its model folder is needed)")


def episode_settings(server: ServerRecord, config: RunConfig, policy_model: str | None = None) -> EpisodeSettings:
    """Tic-tac-toe's own settings on this server: tito with the model's tokenizer; the user is the base model."""
    return EpisodeSettings(
        **{
            **TicTacToe.settings,
            "policy_base_urls": [server.base_url],
            "user_base_urls": [server.base_url],
            "policy_model": policy_model or server.model,
            "user_model": server.model,
            "policy_tokenizer": server.model_path,
            "token_mode": "tito",
            "policy_temperature": config.temperature,
            "policy_max_tokens": config.policy_max_tokens,
            "request_timeout_s": 900,
        }
    )


# -- evaluation -------------------------------------------------------------------------------------------


def evaluate(
    server: ServerRecord, tasks: Sequence[Mapping[str, Any]], out: Path, name: str, config: RunConfig, policy_model: str
) -> dict[str, list[float]]:
    """Play the held-out positions with `policy_model` (the same collection before and after); rewards per task."""
    tasks_file = out / "held_out.jsonl"
    if not tasks_file.exists():
        tasks_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    output = out / f"{name}.jsonl"
    output.unlink(missing_ok=True)
    spec = CollectSpec(
        input=tasks_file,
        output=output,
        env="tictactoe",
        settings=episode_settings(server, config, policy_model),
        repeats=config.eval_repeats,
        concurrency=config.concurrency,
    )
    result = asyncio.run(collect(spec))
    if result.failed:
        raise RuntimeError(f"{result.failed} of {result.episodes} {name} episodes aborted: see {output}.failures.jsonl")
    rewards: dict[str, list[float]] = defaultdict(list)
    for line in output.read_text().splitlines():
        record = json.loads(line)
        rewards[record["task_id"]].append(float(record["reward"] or 0.0))
    return dict(rewards)


def bootstrap(
    before: Mapping[str, Sequence[float]], after: Mapping[str, Sequence[float]], resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Mean reward before and after, and after - before, each with a 95% percentile bootstrap interval over
    positions (resampled together: the difference is paired by position)."""
    ids = sorted(set(before) & set(after))
    b = [statistics.fmean(before[i]) for i in ids]
    a = [statistics.fmean(after[i]) for i in ids]
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {"before": [], "after": [], "difference": []}
    for _ in range(resamples):
        pick = [rng.randrange(len(ids)) for _ in ids]
        mb, ma = statistics.fmean(b[i] for i in pick), statistics.fmean(a[i] for i in pick)
        draws["before"].append(mb)
        draws["after"].append(ma)
        draws["difference"].append(ma - mb)
    points = {"before": statistics.fmean(b), "after": statistics.fmean(a)}
    points["difference"] = points["after"] - points["before"]
    out: dict[str, Any] = {"positions": len(ids), "episodes": sum(len(before[i]) for i in ids)}
    for key, values in draws.items():
        values.sort()
        low, high = values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]
        out[key] = {"mean": points[key], "ci95": [low, high]}
    return out


def legal_share(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of episodes whose move the environment accepted (a free cell): whether the policy reads the board."""
    if not records:
        return None
    return statistics.fmean(
        any(m.get("role") == "tool" and m.get("status") == "success" for m in r["messages"]) for r in records
    )


def random_legal_win_rate(tasks: Sequence[Mapping[str, Any]]) -> float:
    """What a uniformly random free cell would win on these positions (each has exactly one winning cell)."""
    return statistics.fmean(1 / (9 - len(t["env_seed"]["initial_moves"])) for t in tasks)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- training ---------------------------------------------------------------------------------------------


def train(
    server: ServerRecord,
    tasks: Sequence[Mapping[str, Any]],
    out: Path,
    config: RunConfig,
    trainer_class: Any = None,
    extra_rewards: Sequence[Callable[..., list[float]]] = (),
    progress: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], str, Any]:
    """GRPO with LoRA on these tasks; (one row per step, the final adapter's served name, the trainer).

    `trainer_class`: a GRPOTrainer subclass to use (a test records what the loss saw); `extra_rewards`: more
    TRL reward functions, summed with the episodes' reward (TRL's default weights)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    batch = config.groups * config.generations
    if batch % config.micro_batch:
        raise SystemExit(f"--micro-batch {config.micro_batch} must divide groups x generations = {batch}")
    order = [dict(t) for t in tasks]
    random.Random(config.seed).shuffle(order)
    order = order[: config.steps * config.groups]
    args = GRPOConfig(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=batch // config.micro_batch,
        num_generations=config.generations,
        max_steps=config.steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        temperature=config.temperature,
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # the weights are bf16 already; no autocast on CPU
        gradient_checkpointing=False,
        seed=config.seed,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(server.model_path, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(server.model_path)
    engine = Engine(episode_settings(server, config))
    rollout = SparringRollout(
        engine,
        env="tictactoe",
        adapter_dir=out / "adapters",
        output=out / "train.jsonl",
        concurrency=config.concurrency,
        ahead=config.ahead,
        tasks=order if config.ahead else None,
    )
    steps: list[dict[str, Any]] = []
    deadline = None if config.train_minutes is None else time.monotonic() + 60 * config.train_minutes

    class StepClock(TrainerCallback):
        """Wall time per optimizer step: the rollout_func call (push + episodes) runs inside it."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            """TRL logs a step's loss, gradient norm and share of groups without reward spread after the step."""
            if logs and "loss" in logs and steps and steps[-1]["step"] == state.global_step:
                for key in ("loss", "grad_norm", "frac_reward_zero_std"):
                    if key in logs:
                        steps[-1][key] = float(logs[key])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            log = rollout.history[-1]
            total = time.perf_counter() - self.started
            row = {
                "step": state.global_step,
                "version": log.version,
                "reward": log.mean_reward,
                "rewards": log.rewards,
                "legal": legal_share(rollout.records),
                "staleness": log.staleness,
                "push_s": round(log.push_s, 3),
                "rollout_wait_s": round(log.wait_s, 3),
                "rollout_s": round(log.rollout_s, 3),
                "train_s": round(total - log.wait_s - log.push_s, 3),
                "step_s": round(total, 3),
            }
            steps.append(row)
            with (out / "steps.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if deadline is not None and time.monotonic() > deadline and state.global_step < config.steps:
                progress(f"training time budget ({config.train_minutes} min) spent: stopping after step {row['step']}")
                control.should_training_stop = True
            progress(
                f"step {row['step']:>3}  reward {row['reward'] if row['reward'] is None else round(row['reward'], 3)}"
                f"  legal {row['legal'] if row['legal'] is None else round(row['legal'], 3)}"
                f"  rollout {log.wait_s:6.1f} s  push {log.push_s:4.1f} s  train {row['train_s']:6.1f} s"
            )

    trainer = (trainer_class or GRPOTrainer)(
        model=model,
        reward_funcs=[sparring_reward, *extra_rewards],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": task_prompts(order)}),
        processing_class=tokenizer,
        rollout_func=rollout,
        peft_config=LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=0.0,
            target_modules=list(config.lora_targets),
            task_type="CAUSAL_LM",
        ),
        callbacks=[StepClock()],
    )
    (out / "steps.jsonl").unlink(missing_ok=True)
    try:
        trainer.train()
        (out / "steps.jsonl").write_text("".join(json.dumps(row) + "\n" for row in steps))  # with the losses
        rollout.push(trainer)  # the last step's adapter, for the evaluation
        adapter = rollout.run(engine.weights.info()).adapter
    finally:
        rollout.close()
    if adapter is None:
        raise RuntimeError("the servers report no adapter after training")
    return steps, adapter, trainer


def plot(steps: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], path: Path) -> None:
    """Training reward per step (with its mean over 16 episodes), beside the held-out before / after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    xs = [s["step"] for s in steps]
    ys = [s["reward"] for s in steps]
    ax.plot(xs, ys, marker="o", label="training reward (per step)")
    window = 5
    if len(ys) >= window:
        smooth = [statistics.fmean(ys[i - window + 1 : i + 1]) for i in range(window - 1, len(ys))]
        ax.plot(xs[window - 1 :], smooth, label=f"training reward, mean of last {window} steps")
    legal = [(s["step"], s["legal"]) for s in steps if s.get("legal") is not None]
    if legal:
        ax.plot(*zip(*legal, strict=True), marker=".", linestyle=":", color="purple", label="legal moves (per step)")
    if summary.get("random_legal_move") is not None:
        ax.axhline(
            summary["random_legal_move"],
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label=f"a random free cell on the held-out positions: {summary['random_legal_move']:.2f}",
        )
    for key, x, colour in (("before", 0, "grey"), ("after", max(xs, default=1), "green")):
        point = summary["evaluation"][key]
        low, high = point["ci95"]
        ax.errorbar(
            [x],
            [point["mean"]],
            yerr=[[point["mean"] - low], [high - point["mean"]]],
            fmt="s",
            color=colour,
            capsize=4,
            label=f"held-out {key}: {point['mean']:.2f} [{low:.2f}, {high:.2f}]",
        )
    ax.set_xlabel("optimizer step (episodes sampled by the adapter of the step before)")
    ax.set_ylabel("mean reward (win = 1) / share")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title("GRPO + LoRA on Qwen2.5-0.5B, tic-tac-toe win-in-one (CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(server: ServerRecord, out: Path, config: RunConfig, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate, train, evaluate again; write summary.json and curve.png into `out`; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    train_tasks, held_out = split_tasks(win_in_one_tasks(), config.eval_positions)
    progress(f"{len(train_tasks)} training positions, {len(held_out)} held out (whole symmetry classes)")
    started = time.perf_counter()
    before = evaluate(server, held_out, out, "before", config, server.model)
    progress(f"before: {statistics.fmean(r for rs in before.values() for r in rs):.3f} on held-out positions")
    eval_s = time.perf_counter() - started
    steps, adapter, _ = train(server, train_tasks, out, config, progress=progress)
    after = evaluate(server, held_out, out, "after", config, adapter)
    summary = {
        "config": config.__dict__ | {"lora_targets": list(config.lora_targets)},
        "model": server.model,
        "adapter": adapter,
        "evaluation": bootstrap(before, after),
        "legal_moves": {name: legal_share(read_records(out / f"{name}.jsonl")) for name in ("before", "after")},
        "random_legal_move": random_legal_win_rate(held_out),
        "train_positions": len(train_tasks),
        "held_out_positions": len(held_out),
        "eval_s": round(eval_s, 1),
        "time_per_step_s": {
            key: round(statistics.median(s[key] for s in steps), 2)
            for key in ("step_s", "rollout_wait_s", "push_s", "train_s")
        }
        if steps
        else {},
        "command": " ".join(sys.argv),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(steps, summary, out / "curve.png")
    ev = summary["evaluation"]
    progress(
        "held-out mean reward: before {b:.3f} [{bl:.3f}, {bh:.3f}], after {a:.3f} [{al:.3f}, {ah:.3f}], "
        "difference {d:+.3f} [{dl:+.3f}, {dh:+.3f}]".format(
            b=ev["before"]["mean"],
            bl=ev["before"]["ci95"][0],
            bh=ev["before"]["ci95"][1],
            a=ev["after"]["mean"],
            al=ev["after"]["ci95"][0],
            ah=ev["after"]["ci95"][1],
            d=ev["difference"]["mean"],
            dl=ev["difference"]["ci95"][0],
            dh=ev["difference"]["ci95"][1],
        )
    )
    legal = summary["legal_moves"]
    progress(
        f"legal moves: before {legal['before']:.3f}, after {legal['after']:.3f}; a random free cell would win "
        f"{summary['random_legal_move']:.3f} of the held-out positions"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/grpo"), help="where records, adapters, results go")
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"a running `sparring models up --lora --max-lora-rank RANK` server (http://{HOST}:PORT/v1)",
    )
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--groups", type=int, default=defaults.groups, help="positions per step")
    parser.add_argument("--generations", type=int, default=defaults.generations, help="episodes per position")
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--rank", type=int, default=defaults.lora_rank, help="LoRA rank (a rank vLLM serves: 8, 16, ...)"
    )
    parser.add_argument(
        "--eval-positions", type=int, default=defaults.eval_positions, help="held-out positions (at least)"
    )
    parser.add_argument("--eval-repeats", type=int, default=defaults.eval_repeats)
    parser.add_argument("--ahead", type=int, choices=(0, 1), default=0, help="1: play step n+1 while step n trains")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-minutes", type=float, default=None, help="stop training after this long")
    args = parser.parse_args(argv)
    config = RunConfig(
        steps=args.steps,
        groups=args.groups,
        generations=args.generations,
        micro_batch=min(args.micro_batch, args.groups * args.generations),
        learning_rate=args.lr,
        lora_rank=args.rank,
        eval_positions=args.eval_positions,
        eval_repeats=args.eval_repeats,
        ahead=args.ahead,
        seed=args.seed,
        train_minutes=args.train_minutes,
    )
    if args.out.exists() and any(args.out.iterdir()):
        shutil.rmtree(args.out / "adapters", ignore_errors=True)
    with lora_server(config.lora_rank, args.base_url) as server:
        run(server, args.out, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
