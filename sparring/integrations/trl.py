"""TRL: sparring plays `GRPOTrainer`'s rollouts, and feeds TRL's async GRPO its samples.

    from sparring.integrations.trl import SparringRollout, sparring_reward, task_prompts

    rollout = SparringRollout(engine, adapter_dir="runs/adapters")   # or SparringRollout(client=...)
    trainer = GRPOTrainer(model, reward_funcs=[sparring_reward], args=GRPOConfig(num_generations=8, ...),
                          train_dataset=Dataset.from_dict({"prompt": task_prompts(tasks)}),
                          rollout_func=rollout, peft_config=LoraConfig(...))

What TRL 1.16 does with a `rollout_func` (read from `trl/trainer/grpo_trainer.py`, and checked by
`tests/test_integration_trl.py` with TRL's own trainer): it calls it once per generation batch with
every prompt already repeated `num_generations` times in a row, each run of `num_generations` rows is
one GRPO group (by position), and it trains on exactly the `prompt_ids` / `completion_ids` returned,
with the loss masked by `env_mask` (1 = the model's token). Every other key reaches the reward
functions as a per-row keyword argument.

So each prompt is a sparring task (`task_prompt(task)`: its JSON; a list of messages is a task with
those messages), each row is one episode cut by `samples.episode_sample` (prompt = the first policy
call's prompt, completion = the rest of the episode's one token sequence, `env_mask` = the ledger's
loss mask), and `sparring_reward` hands the verifier's reward back to TRL. An episode that has no
policy tokens (aborted before its first call) becomes one masked pad token with reward None, which
TRL scores as unscorable (advantage 0).

Weights: TRL pushes weights to vLLM only with `use_vllm` (its own server). Without it, the bridge
pushes the trainer's LoRA adapter through sparring's weight sync whenever `trainer.state.global_step`
changed since the last call: it saves `adapter_dir/step{step}` and tells sparring to load it as the next
version (every policy call then goes to it, and records the version that sampled it); the simulated
user keeps the base model. With `ahead=1` the next step's episodes are played while the trainer
trains (one step of staleness; see `SparringRollout`).

`SparringRolloutWorker` is the same thing in the shape of TRL's async GRPO (`trl.experimental.
async_grpo`): a `RolloutWorkerProtocol` whose queue holds `RolloutSample`s with `model_version` (the
oldest version that sampled the episode) and `group_id`.

TRL is imported only by the functions that need its classes; this module imports without it.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sparring.core.errors import InputError, UsageError
from sparring.engine.engine import Engine
from sparring.integrations.samples import episode_sample

T = TypeVar("T")

PlayGroup = Callable[[dict[str, Any], int, int], Awaitable[list[dict[str, Any]]]]
"""(task, group number, n) -> the n records of one group: how a bridge plays (engine or service)."""


class WeightSink(Protocol):
    """Where a bridge sends a new policy version: sparring's weight sync (`engine.weights`, or the service's)."""

    async def update(self, version: str, adapter: str | None) -> None:
        """Make `version` current; with `adapter` (an absolute folder the model servers read), load it first."""
        ...

    async def current(self) -> str | None:
        """The version sparring or the servers have now (None: none set)."""
        ...


# -- prompts and tasks ------------------------------------------------------------------------------------


def task_prompt(task: Mapping[str, Any]) -> str:
    """A sparring task as a TRL prompt (its JSON); `prompt_task` reads it back."""
    return json.dumps(dict(task), sort_keys=True, separators=(",", ":"))


def task_prompts(tasks: Iterable[Mapping[str, Any]]) -> list[str]:
    """The `prompt` column of a TRL dataset whose rows are these tasks."""
    return [task_prompt(task) for task in tasks]


def prompt_task(prompt: Any) -> dict[str, Any]:
    """The task a TRL prompt names: a task's JSON, or a conversation (a list of messages) to open the episode with."""
    if isinstance(prompt, list):
        return {"messages": prompt}
    if isinstance(prompt, str):
        try:
            task = json.loads(prompt)
        except json.JSONDecodeError:
            task = None
        if isinstance(task, dict):
            return task
    shown = repr(prompt)
    raise InputError(
        f"TRL prompt {shown[:80] + '...' if len(shown) > 80 else shown}: not a sparring task; make the dataset's "
        "prompt column with sparring.integrations.trl.task_prompts(tasks), or use conversational prompts"
    )


def sparring_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """TRL reward function: each episode's verifier reward (None for an aborted one: TRL gives it no advantage)."""
    rewards = kwargs.get("sparring_reward")
    if rewards is None:
        raise UsageError("sparring_reward needs the rollout_func to be sparring.integrations.trl.SparringRollout")
    return list(rewards)


# -- the rollout function -----------------------------------------------------------------------------------


@dataclass(slots=True)
class StepLog:
    """What one `rollout_func` call did (the bench reads these)."""

    step: int
    version: str | None
    episodes: int
    push_s: float = 0.0
    """Saving the adapter and loading it into the servers."""
    wait_s: float = 0.0
    """Time the trainer waited for episodes in this call (all of the rollout without `ahead`)."""
    rollout_s: float = 0.0
    """Wall time from the first episode's start to the last one's end."""
    rewards: list[float | None] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    """Per episode: the step trained on it minus the oldest version that sampled it (empty when unknown)."""

    @property
    def mean_reward(self) -> float | None:
        scored = [r for r in self.rewards if r is not None]
        return sum(scored) / len(scored) if scored else None


@dataclass(slots=True)
class _Batch:
    """Episodes for one call, started (possibly ahead of it)."""

    tasks: list[dict[str, Any]]
    groups: list[int]
    """One number per group of num_generations tasks."""
    future: Future[list[dict[str, Any]]]
    started: float


class SparringRollout:
    """A `rollout_func` for TRL's `GRPOTrainer` that plays each prompt's episodes with sparring.

    `engine`: plays in this process (`Engine(settings)`); or `client`: a `sparring.client` client of a running
    `sparring serve` (same records). `adapter_dir`: where the adapter of each step is saved for the model
    servers to load (they must see this path); None: no weight push (the weights reach the servers some other
    way, or the run is an evaluation). `output`: a JSONL file every record is appended to (the run's data,
    with the version of every call). `concurrency`: episodes in flight.

    Versions: the servers' weights at trainer step `s` are version `first_version + s`, an integer label as
    sparring's weight sync wants (it refuses a version that is not newer). `first_version` None continues
    from the servers' current integer version (+1, or 0 when they have none), so a second run against the
    same servers needs no restart.

    `ahead=1` overlaps rollouts with training: each call returns the episodes started during the previous
    step and starts the next call's at once, so they are sampled by the adapter of the step before (one step
    stale, every token's version is recorded). Episodes then cannot be the prompts TRL passes (TRL names
    them only when it calls), so the bridge plays its own stream, `tasks` (cycled), and TRL's prompts only
    fix how many groups of `num_generations` to return: TRL's logged prompt text is not the played one.
    Without `use_vllm` TRL applies no importance-sampling correction to stale rows; set
    `GRPOConfig(off_policy_mask_threshold=...)`, which reads the sampled logprobs, if that matters.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        client: Any = None,
        env: str | None = None,
        settings: Mapping[str, Any] | None = None,
        adapter_dir: str | Path | None = None,
        weights: WeightSink | None = None,
        output: str | Path | None = None,
        concurrency: int = 32,
        ahead: int = 0,
        tasks: Iterable[Mapping[str, Any]] | None = None,
        first_version: int | None = None,
    ) -> None:
        if (engine is None) == (client is None):
            raise UsageError(
                "SparringRollout needs exactly one of engine= (play here) or client= (an AsyncSparringClient)"
            )
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {concurrency}")
        if ahead not in (0, 1):
            raise UsageError(f"ahead must be 0 or 1 (steps of staleness), got {ahead}")
        if ahead and tasks is None:
            raise UsageError("ahead=1 plays the bridge's own task stream: pass tasks=")
        self.env = env
        self.settings = dict(settings or {})
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
        self.output = Path(output) if output is not None else None
        self.concurrency = concurrency
        self.ahead = ahead
        self._tasks: Iterator[dict[str, Any]] | None = _cycle(tasks) if tasks is not None else None
        self._play: PlayGroup = player(engine, client, env, self.settings, concurrency)
        self._aclose = engine.aclose if engine is not None else client.aclose
        if weights is not None:
            self.weights: WeightSink | None = weights
        elif self.adapter_dir is not None:
            self.weights = weight_sink(engine, client)
        else:
            self.weights = None
        self.first_version = first_version
        self.step: int | None = None
        """The trainer step whose weights the servers have (None before the first push)."""
        self.history: list[StepLog] = []
        self.records: list[dict[str, Any]] = []
        """The last call's records, in row order."""
        self._loop = _LoopThread()
        self._group_counter = 0
        self._pending: _Batch | None = None

    def version_of(self, step: int) -> int:
        """The version label (as an integer) of the weights at trainer step `step`."""
        if self.first_version is None:
            raise UsageError("no version yet: the first rollout_func call numbers them")
        return self.first_version + step

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        """TRL calls this with the generation batch's prompts (each repeated num_generations times)."""
        num_generations = int(trainer.args.num_generations)
        if len(prompts) % num_generations:
            raise UsageError(f"TRL passed {len(prompts)} prompts, not a multiple of num_generations={num_generations}")
        if getattr(trainer.accelerator, "num_processes", 1) > 1:
            raise UsageError("SparringRollout pushes weights from one process; run the trainer in a single process")
        step = int(trainer.state.global_step)
        log = StepLog(step=step, version=None, episodes=len(prompts))
        started = time.perf_counter()
        self.push(trainer)
        log.push_s = time.perf_counter() - started
        trained_at = None if self.first_version is None else self.version_of(step)
        log.version = None if trained_at is None else str(trained_at)

        waited = time.perf_counter()
        if self.ahead:
            batch = self._pending or self._start(self._own_tasks(len(prompts), num_generations), num_generations)
            records = batch.future.result()
            self._pending = self._start(self._own_tasks(len(prompts), num_generations), num_generations)
        else:
            batch = self._start(self._prompt_tasks(prompts, num_generations), num_generations)
            records = batch.future.result()
        log.wait_s = time.perf_counter() - waited
        log.rollout_s = max((r.get("timing", {}).get("wall_s", 0.0) for r in records), default=0.0)
        self.records = records
        if self.output is not None:
            with self.output.open("a", encoding="utf-8") as out:
                for record in records:
                    out.write(json.dumps(record) + "\n")
        pad = _pad_id(trainer)
        rows = rollout_rows(records, pad_id=pad, trained_at=trained_at)
        log.rewards = list(rows["sparring_reward"])
        log.staleness = [s for s in rows["sparring_staleness"] if s is not None]
        self.history.append(log)
        return rows

    def push(self, trainer: Any) -> int | None:
        """Make the trainer's current weights the policy's, unless the servers have them already; their version.

        `__call__` does this before each step's episodes; after `trainer.train()` call it once more to serve
        the final adapter (the last optimizer step's, which no episode has sampled yet). None: no weight push.
        """
        if self.weights is None:
            return None
        step = int(trainer.state.global_step)
        if step != self.step:
            self._push(trainer, step)
        return self.version_of(step)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the bridge's event loop, where the engine's HTTP sessions live (e.g.
        `rollout.run(engine.weights.info())`)."""
        return self._loop.run(coro)

    def close(self) -> None:
        """End the episodes started ahead, close the engine's (or client's) HTTP sessions, which live on the
        bridge's event loop, and stop that loop."""
        if self._pending is not None:
            self._pending.future.cancel()
            self._pending = None
        self._loop.stop(self._aclose())

    # -- weights ---------------------------------------------------------------------------------------

    def _push(self, trainer: Any, step: int) -> None:
        """Save the trainer's adapter for `step` and make it the policy's weights, version `version_of(step)`."""
        assert self.weights is not None
        if self.first_version is None:
            current = self._loop.run(self.weights.current())
            number = None if current is None else _as_int(current)
            self.first_version = 0 if number is None else number + 1
        adapter: str | None = None
        if self.adapter_dir is not None:
            model = trainer.accelerator.unwrap_model(trainer.model)
            if not hasattr(model, "peft_config"):
                raise UsageError(
                    "SparringRollout pushes LoRA adapters: train with peft_config=LoraConfig(...), or pass "
                    "adapter_dir=None and sync the weights yourself"
                )
            path = self.adapter_dir / f"step{step}"
            model.save_pretrained(str(path))
            adapter = str(path.resolve())
        self._loop.run(self.weights.update(str(self.version_of(step)), adapter))
        self.step = step

    # -- episodes --------------------------------------------------------------------------------------

    def _prompt_tasks(self, prompts: Sequence[Any], num_generations: int) -> list[dict[str, Any]]:
        tasks = [prompt_task(prompt) for prompt in prompts]
        for start in range(0, len(tasks), num_generations):
            if any(t != tasks[start] for t in tasks[start : start + num_generations]):
                raise UsageError(
                    "TRL's prompts are not in runs of num_generations equal prompts; is this GRPOTrainer's "
                    "RepeatSampler?"
                )
        return tasks

    def _own_tasks(self, count: int, num_generations: int) -> list[dict[str, Any]]:
        assert self._tasks is not None
        tasks: list[dict[str, Any]] = []
        for _ in range(count // num_generations):
            task = next(self._tasks)
            tasks += [task] * num_generations
        return tasks

    def _start(self, tasks: list[dict[str, Any]], num_generations: int) -> _Batch:
        groups = []
        for _ in range(0, len(tasks), num_generations):
            groups.append(self._group_counter)
            self._group_counter += 1
        future = self._loop.submit(self._play_all(tasks, groups, num_generations))
        return _Batch(tasks=tasks, groups=groups, future=future, started=time.perf_counter())

    async def _play_all(
        self, tasks: list[dict[str, Any]], groups: list[int], num_generations: int
    ) -> list[dict[str, Any]]:
        played = await asyncio.gather(
            *(self._play(tasks[i * num_generations], group, num_generations) for i, group in enumerate(groups))
        )
        return [record for group in played for record in group]


def rollout_rows(
    records: Sequence[Mapping[str, Any]], *, pad_id: int, trained_at: int | None = None
) -> dict[str, list[Any]]:
    """TRL's rollout_func output for these records, one row each, in order (see the module docstring)."""
    rows: dict[str, list[Any]] = {
        "prompt_ids": [],
        "completion_ids": [],
        "logprobs": [],
        "env_mask": [],
        "sparring_reward": [],
        "sparring_status": [],
        "sparring_record_id": [],
        "weight_versions": [],
        "model_version": [],
        "sparring_staleness": [],
    }
    for record in records:
        sample = episode_sample(record)
        if sample.has_tokens:
            rows["prompt_ids"].append(sample.prompt_ids)
            rows["completion_ids"].append(sample.response_ids)
            rows["logprobs"].append(sample.response_logprobs)
            rows["env_mask"].append(sample.response_mask)
            reward = None if sample.status == "aborted" else sample.reward
        else:  # nothing sampled: one masked pad token, unscorable (TRL zeroes its advantage)
            rows["prompt_ids"].append([pad_id])
            rows["completion_ids"].append([pad_id])
            rows["logprobs"].append([0.0])
            rows["env_mask"].append([0])
            reward = None
        rows["sparring_reward"].append(reward)
        rows["sparring_status"].append(sample.status)
        rows["sparring_record_id"].append(sample.record_id)
        rows["weight_versions"].append(sample.call_versions)
        rows["model_version"].append(sample.min_version)
        oldest = sample.min_version
        rows["sparring_staleness"].append(None if oldest is None or trained_at is None else trained_at - oldest)
    return rows


def _pad_id(trainer: Any) -> int:
    tokenizer = getattr(trainer, "processing_class", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise UsageError("the trainer's tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


# -- TRL's async GRPO ------------------------------------------------------------------------------------


class SparringRolloutWorker:
    """TRL async GRPO's `RolloutWorkerProtocol`: plays groups of `num_generations` episodes from `tasks` without
    stopping and queues TRL `RolloutSample`s (`trl.experimental.async_grpo`).

    Each sample is one episode's whole token sequence (`input_ids`, `completion_mask` = the ledger's loss
    mask, `old_log_probs` = the sampled logprobs), the group-normalised advantage as TRL's own worker computes
    it (`(r - mean) / (std + 1e-8)`, population std, over the group's scored episodes; 0 for an aborted one),
    `model_version` = the oldest version that sampled it (the version at scheduling when the servers report
    none) and `group_id`. Episodes without policy tokens are left out. The trainer pushes weights itself
    (its `weight_transfer`); `update_model_version` tells sparring the version, so records carry it.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        tasks: Iterable[Mapping[str, Any]],
        num_generations: int,
        client: Any = None,
        env: str | None = None,
        settings: Mapping[str, Any] | None = None,
        weights: WeightSink | None = None,
        groups_in_flight: int = 2,
        max_queue: int = 64,
    ) -> None:
        if (engine is None) == (client is None):
            raise UsageError("SparringRolloutWorker needs exactly one of engine= or client=")
        if num_generations < 1 or groups_in_flight < 1:
            raise UsageError("num_generations and groups_in_flight must be at least 1")
        self.num_generations = num_generations
        self.groups_in_flight = groups_in_flight
        self.rollout_buffer: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.metrics_queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.model_version = 0
        settings = dict(settings or {})
        self._play: PlayGroup = player(engine, client, env, settings, groups_in_flight * num_generations)
        self._aclose = engine.aclose if engine is not None else client.aclose
        self.weights = weights if weights is not None else weight_sink(engine, client)
        self._tasks = _cycle(tasks)
        self._loop: _LoopThread | None = None
        self._run: Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._last_sample = time.monotonic()
        self._group_counter = 0

    def start(self) -> None:
        """Begin producing samples (TRL calls it once, after the first weight sync)."""
        if self._loop is not None:
            raise UsageError("the rollout worker is already running")
        self._loop = _LoopThread()
        self._last_sample = time.monotonic()
        self._run = self._loop.submit(self._produce())

    def stop(self) -> None:
        """Stop producing: episodes in flight are cancelled, the engine's (or client's) HTTP sessions closed (TRL
        calls it at the end of training)."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.stop(self._shutdown())
            self._loop = None

    async def _shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._aclose()

    def update_model_version(self, model_version: int) -> None:
        """The trainer's new policy version: tag what is sampled from now on with it."""
        self.model_version = int(model_version)
        if self._loop is not None:
            self._loop.run(self.weights.update(str(model_version), None))

    def check_health(self, stale_after_s: float) -> None:
        """Raise if producing failed, or no sample came for `stale_after_s` seconds."""
        if self._run is not None and self._run.done() and not self._run.cancelled():
            error = self._run.exception()
            if error is not None:
                raise RuntimeError(f"sparring rollout worker failed: {error!r}") from error
        if time.monotonic() - self._last_sample > stale_after_s:
            raise RuntimeError(f"sparring rollout worker produced no sample for {stale_after_s:.0f} s")

    async def _produce(self) -> None:
        self._task = asyncio.current_task()
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                while len(running) < self.groups_in_flight:
                    running.add(asyncio.ensure_future(self._group(next(self._tasks))))
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _group(self, task: dict[str, Any]) -> None:
        group_id = self._group_counter
        self._group_counter += 1
        scheduled = self.model_version
        records = await self._play(task, group_id, self.num_generations)
        samples = rollout_samples(records, group_id=group_id, scheduled_version=scheduled)
        await asyncio.to_thread(_put_all, self.rollout_buffer, samples)  # a group stays together in the queue
        self._last_sample = time.monotonic()
        rewards = [r["reward"] for r in records if r.get("reward") is not None]
        self.metrics_queue.put(
            {"sparring/episodes": float(len(records)), "sparring/reward_mean": (sum(rewards) / len(rewards))}
            if rewards
            else {"sparring/episodes": float(len(records))}
        )


def _put_all(into: queue.Queue[Any], items: Sequence[Any]) -> None:
    for item in items:
        into.put(item)


def rollout_samples(records: Sequence[Mapping[str, Any]], *, group_id: int, scheduled_version: int = 0) -> list[Any]:
    """TRL async GRPO `RolloutSample`s of one group's records (advantages normalised over the group)."""
    import numpy as np
    from trl.experimental.async_grpo.async_rollout_worker import RolloutSample

    samples = [episode_sample(record) for record in records]
    rewards = [s.reward if (s.reward is not None and s.status != "aborted") else math.nan for s in samples]
    scored = [r for r in rewards if not math.isnan(r)]
    mean = sum(scored) / len(scored) if scored else 0.0
    std = math.sqrt(sum((r - mean) ** 2 for r in scored) / len(scored)) if scored else 0.0
    out = []
    for record, sample, reward in zip(records, samples, rewards, strict=True):
        if not sample.has_tokens:
            continue
        ids = sample.prompt_ids + sample.response_ids
        mask = [0] * len(sample.prompt_ids) + sample.response_mask
        logps = [0.0] * len(sample.prompt_ids) + sample.response_logprobs
        advantage = 0.0 if math.isnan(reward) else (reward - mean) / (std + 1e-8)
        version = sample.min_version if sample.min_version is not None else scheduled_version
        out.append(
            RolloutSample(
                prompt=_opening(record),
                completion=_continuation(record),
                input_ids=np.asarray(ids, dtype=np.int64),
                completion_mask=np.asarray(mask, dtype=np.int64),
                old_log_probs=np.asarray(logps, dtype=np.float32),
                advantage=float(advantage),
                model_version=int(version),
                group_id=group_id,
                metrics={"reward": 0.0 if math.isnan(reward) else reward, "num_turns": float(sample.num_turns)},
                enqueued_at=time.time(),
            )
        )
    return out


def _opening(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages before the policy's first reply (TRL logs them as the prompt)."""
    out = []
    for message in record.get("messages") or ():
        if message.get("actor") == "policy":
            break
        out.append({"role": str(message.get("role")), "content": str(message.get("content") or "")})
    return out


def _continuation(record: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = list(record.get("messages") or ())
    first = next((i for i, m in enumerate(messages) if m.get("actor") == "policy"), len(messages))
    return [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in messages[first:]]


# -- players and weight sinks ------------------------------------------------------------------------------


def player(
    engine: Engine | None, client: Any, env: str | None, settings: Mapping[str, Any], concurrency: int
) -> PlayGroup:
    """How a bridge plays a group: `engine.play` per episode (at most `concurrency` at once), or one
    `rollouts(task, repeats=n)` request of an `AsyncSparringClient` (the service bounds its own concurrency)."""
    overrides = dict(settings) or None
    if engine is None:

        async def play_remote(task: dict[str, Any], group: int, n: int) -> list[dict[str, Any]]:
            return list(await client.rollouts(task, env=env, repeats=n, settings=overrides))

        return play_remote
    slots: asyncio.Semaphore | None = None

    async def play_here(task: dict[str, Any], group: int, n: int) -> list[dict[str, Any]]:
        nonlocal slots
        if slots is None:  # made on the loop that plays
            slots = asyncio.Semaphore(concurrency)
        gate = slots  # bound here: `one` would see the nonlocal as possibly None

        async def one(repeat: int) -> dict[str, Any]:
            async with gate:
                return await engine.play(task, env=env, settings=overrides, task_index=group, repeat_index=repeat)

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    return play_here


def weight_sink(engine: Engine | None, client: Any) -> WeightSink:
    """sparring's weight sync as a bridge calls it: `engine.weights`, or the service's through its client."""
    return _EngineWeights(engine) if engine is not None else _ServiceWeights(client)


class _EngineWeights:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def update(self, version: str, adapter: str | None) -> None:
        await self.engine.weights.update(version, adapter)

    async def current(self) -> str | None:
        info = await self.engine.weights.info()
        return _newest([info.version, *(replica.version for replica in info.replicas)])


class _ServiceWeights:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def update(self, version: str, adapter: str | None) -> None:
        await self.client.update_weights(version, adapter=adapter)

    async def current(self) -> str | None:
        state = await self.client.weights()
        return _newest([state.version, *(replica.version for replica in state.replicas)])


def _newest(versions: Sequence[str | None]) -> str | None:
    """The highest integer label among these (the servers' own `default` and other labels do not count)."""
    numbers = [n for n in (_as_int(v) for v in versions if v is not None) if n is not None]
    return str(max(numbers)) if numbers else None


def _as_int(version: str) -> int | None:
    text = version.strip()
    return int(text) if text.isdigit() else None


# -- a private event loop for a synchronous caller ---------------------------------------------------------


class _LoopThread:
    """One event loop in a daemon thread: TRL calls the bridge synchronously, sparring is async, and its HTTP
    sessions live per loop, so one long-lived loop keeps them across steps."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sparring-rollout", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def stop(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run `last` (a clean-up) on the loop, then stop the loop and its thread."""
        if self._loop.is_running():
            if last is not None:
                self.run(last)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        elif last is not None:
            last.close()
        self._loop.close()


def _cycle(tasks: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    items = [dict(task) for task in tasks]
    if not items:
        raise UsageError("tasks is empty")
    while True:
        yield from items
