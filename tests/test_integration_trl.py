"""TRL's real GRPOTrainer trains on sparring's episodes (scripted server, a tiny model made here).

Needs torch, TRL and peft (`pip install 'sparring[trl]'`; scripts/install.sh installs them with vLLM),
hence the `trainers` marker: `pytest -m trainers`.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
from pathlib import Path
from typing import Any

import pytest
from trl_harness import ledger_rows, loss_rows, recording_trainer

from sparring import Engine, EpisodeSettings
from sparring.envs.tictactoe import LINES
from sparring.integrations.samples import episode_sample
from sparring.integrations.trl import SparringRollout, prompt_task, rollout_rows, sparring_reward, task_prompts
from sparring.testing import Call, FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, ModelRequest, find_board
from sparring.testing.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE, content_text

pytestmark = pytest.mark.trainers

# X at 0 and 1, O at 3 and 4: X wins at 2 in its one move.
WIN_IN_ONE = {
    "id": "win-in-one",
    "env_seed": {"initial_moves": [{"position": p, "mark": m} for p, m in ((0, "X"), (3, "O"), (1, "X"), (4, "O"))]},
    "limits": {"max_turns": 1, "max_steps_per_turn": 1},
}
# X at 0, O at 3, two turns: a winner plays 1, O answers 8, then 2 wins. Its rows hold O's turn, masked 0.
TWO_TURNS = {
    "id": "two-turns",
    "env_seed": {"initial_moves": [{"position": 0, "mark": "X"}, {"position": 3, "mark": "O"}]},
    "limits": {"max_turns": 2, "max_steps_per_turn": 1},
}
G = 4


def move_by_repeat(request: ModelRequest) -> Call:
    """Episode ids are `t<group>-r<repeat>-...`. Even repeats complete a line when they can, else take the lowest
    free cell; odd ones take the highest free cell. So a group's rewards differ (GRPO has something to learn)."""
    assert request.session_id is not None
    repeat = int(request.session_id.split("-")[1].removeprefix("r"))
    board = next(b for m in reversed(request.messages) if (b := find_board(content_text(m.get("content")))) is not None)
    free = [cell for cell, mark in enumerate(board) if not mark]
    if repeat % 2:
        return Call("make_move", {"position": free[-1]})
    mine = {cell for cell, mark in enumerate(board) if mark == "X"}
    wins = [cell for cell in free if any(cell in line and len(mine & set(line)) == 2 for line in LINES)]
    return Call("make_move", {"position": (wins or free)[0]})


def hf_tokenizer() -> Any:
    """A Hugging Face tokenizer over the scripted server's vocabulary (ids only: the trainer never encodes)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"b{i}": len(SPECIAL_TOKENS) + i for i in range(VOCAB_SIZE - len(SPECIAL_TOKENS))}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>")),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )


def tiny_model() -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(config)


def scripted_settings(server: FakeModelServer) -> EpisodeSettings:
    return EpisodeSettings(
        policy_base_urls=[server.base_url], user_base_urls=[server.base_url], token_mode="tito", request_timeout_s=10.0
    )


def grpo_args(tmp_path: Path, steps: int) -> Any:
    """One group of G per step and per optimizer step, on CPU; a learning rate that moves the tiny model."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=G,
        num_generations=G,
        max_steps=steps,
        learning_rate=5e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
    )


def test_prompts_are_tasks() -> None:
    (prompt,) = task_prompts([WIN_IN_ONE])
    assert prompt_task(prompt) == WIN_IN_ONE
    assert prompt_task([{"role": "user", "content": "hi"}]) == {"messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="not a sparring task"):
        prompt_task("play well")


async def test_grpo_trainer_trains_on_exactly_the_ledger(tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    seen: list[dict[str, Any]] = []

    responders = {"policy": move_by_repeat, "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(responders) as server:
        rollout = SparringRollout(
            Engine(scripted_settings(server)), adapter_dir=tmp_path / "adapters", output=tmp_path / "records.jsonl"
        )
        trainer = recording_trainer(seen)(
            model=tiny_model(),
            reward_funcs=[sparring_reward],
            args=grpo_args(tmp_path, steps=2),
            train_dataset=Dataset.from_dict({"prompt": task_prompts([WIN_IN_ONE, TWO_TURNS])}),
            processing_class=hf_tokenizer(),
            rollout_func=rollout,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        try:
            await asyncio.to_thread(trainer.train)
        finally:
            await asyncio.to_thread(rollout.close)
        adapter_loads = [entry for entry in server.adapter_log if entry[0] == "load"]

    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * G, "one rollout_func call per optimizer step, G episodes each"
    assert sorted(r["reward"] for r in records) == [0.0] * G + [1.0] * G

    # The trainer's loss saw exactly the ledger's ids and mask: prompt = first call's prompt, completion = the rest.
    assert loss_rows(seen) == ledger_rows(map(episode_sample, records))
    assert sorted(len(s.call_versions) for s in map(episode_sample, records)) == [1] * G + [2] * G
    assert sum(0 in mask for _, _, mask in loss_rows(seen)) == G, (
        "two-turn rows hold O's turn between the calls, masked 0"
    )
    assert all(math.isfinite(b["loss"]) for b in seen)

    # The adapter trained, was saved per step, and sparring's weight sync loaded each version.
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed and all("lora_" in n for n in changed)
    assert [Path(path).name for _, _, path in adapter_loads] == ["step0", "step1"]
    assert [h.step for h in rollout.history] == [0, 1]


async def test_ahead_trains_each_step_on_episodes_the_step_before_sampled(tmp_path: Path) -> None:
    """ahead=1: step n's episodes start as soon as step n-1's are handed over, so they run during step n-1's
    training on its adapter; the bridge plays its own task stream and records how stale each episode is."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOTrainer

    steps = 3
    responders = {"policy": move_by_repeat, "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(responders) as server:
        rollout = SparringRollout(
            Engine(scripted_settings(server)),
            adapter_dir=tmp_path / "adapters",
            output=tmp_path / "records.jsonl",
            ahead=1,
            tasks=[WIN_IN_ONE, TWO_TURNS],
        )
        trainer = GRPOTrainer(
            model=tiny_model(),
            reward_funcs=[sparring_reward],
            args=grpo_args(tmp_path, steps),
            train_dataset=Dataset.from_dict({"prompt": task_prompts([WIN_IN_ONE])}),
            processing_class=hf_tokenizer(),
            rollout_func=rollout,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )
        try:
            await asyncio.to_thread(trainer.train)
        finally:
            await asyncio.to_thread(rollout.close)  # ends the episodes started for a step that never came
        adapter_loads = [Path(path).name for kind, _, path in server.adapter_log if kind == "load"]

    first = rollout.first_version
    assert first is not None
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == steps * G
    by_step = [records[s * G : (s + 1) * G] for s in range(steps)]
    # The bridge's own stream, cycled, one group per call (TRL's prompt, always win-in-one, only sets the count).
    assert [{r["task_id"] for r in step} for step in by_step] == [{"win-in-one"}, {"two-turns"}, {"win-in-one"}]
    assert adapter_loads == [f"step{s}" for s in range(steps)]
    assert [h.step for h in rollout.history] == list(range(steps))
    assert [h.version for h in rollout.history] == [str(first + s) for s in range(steps)]

    # Step 0 has nothing to overlap with: its episodes ran on its own adapter, before training began.
    assert all(v == str(first) for r in by_step[0] for v in episode_sample(r).call_versions)
    assert rollout.history[0].staleness == [0] * G
    for s in range(1, steps):
        # Started before this step's adapter was pushed: sampled by the step before's, the newer one at most.
        for record in by_step[s]:
            assert set(episode_sample(record).call_versions) <= {str(first + s - 1), str(first + s)}
            assert episode_sample(record).call_versions[0] == str(first + s - 1), record["trajectory"]["calls"]
        assert rollout.history[s].staleness == [1] * G
        assert all(r["error"] is None for r in by_step[s])


def test_rollout_rows_mask_an_episode_without_policy_tokens() -> None:
    aborted = {"id": "e1", "status": "aborted", "reward": None, "trajectory": {"segments": [], "calls": []}}
    rows = rollout_rows([aborted], pad_id=0)
    assert (rows["prompt_ids"], rows["completion_ids"], rows["env_mask"], rows["sparring_reward"]) == (
        [[0]],
        [[0]],
        [[0]],
        [None],
    )


async def test_async_grpo_samples_go_through_trls_own_queue_filter_and_collator() -> None:
    """TRL's AsyncGRPOTrainer needs a GPU kernel, but the path a rollout worker feeds runs on CPU with TRL's
    classes: RolloutSample -> RolloutQueueDataset (staleness filter) -> FixedCountBatcher -> DataCollatorForRollout."""
    from collections import defaultdict

    from accelerate import PartialState
    from trl.experimental.async_grpo.async_grpo_trainer import (
        DataCollatorForRollout,
        FixedCountBatcher,
        RolloutQueueDataset,
    )

    from sparring.integrations.trl import SparringRolloutWorker

    responders = {"policy": move_by_repeat, "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(responders) as server:
        worker = SparringRolloutWorker(Engine(scripted_settings(server)), tasks=[TWO_TURNS], num_generations=G)
        worker.start()
        try:
            samples = [await asyncio.to_thread(worker.rollout_buffer.get, timeout=60) for _ in range(G)]
            worker.check_health(stale_after_s=600)
        finally:
            await asyncio.to_thread(worker.stop)

    assert {s.group_id for s in samples} == {0}
    assert sorted(s.advantage for s in samples) == pytest.approx([-1, -1, 1, 1]), "2 wins, 2 losses: population std"
    for s in samples:
        assert len(s.input_ids) == len(s.completion_mask) == len(s.old_log_probs)
        assert set(s.completion_mask.tolist()) == {0, 1}
        assert (s.old_log_probs[s.completion_mask == 0] == 0).all()

    PartialState()  # TRL logs stale drops through accelerate's state
    rollout_queue: queue.Queue = queue.Queue()
    for s in samples:
        rollout_queue.put(s)
    metrics: dict = defaultdict(list)
    dataset = RolloutQueueDataset(
        rollout_queue=rollout_queue,
        model_version_fn=lambda: 0,
        check_health_fn=lambda stale_after_s: None,
        stale_after_s=60.0,
        metrics=metrics,
        max_staleness=1,
    )
    rows = next(iter(FixedCountBatcher(dataset, num_processes=1, microbatch_size=G)))
    batch = DataCollatorForRollout(pad_token_id=0, num_processes=1, metrics=metrics).torch_call([rows])
    trained = int(sum(int(s.completion_mask[1:].sum()) for s in samples))
    assert int((batch["token_index"] >= 0).sum()) == trained, "one loss term per token the policy sampled"
    assert sorted({round(a, 6) for a in batch["advantages"].flatten().tolist()}) == [-1.0, 1.0]
