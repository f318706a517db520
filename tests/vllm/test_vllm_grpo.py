"""Two GRPO steps with TRL's real GRPOTrainer on the default model, sparring playing every episode on the real
vLLM (CPU build), the LoRA adapter hot-loaded after each optimizer step: the short form of
`examples/train_grpo.py` (the mechanics, not the learning).

Needs vLLM and the trl extra (scripts/install.sh installs both): markers `vllm` and `trainers`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from trl_harness import ledger_rows, loss_rows, recording_trainer

from sparring.integrations.samples import episode_sample
from sparring.models.local import ServerRecord

pytestmark = [pytest.mark.vllm, pytest.mark.trainers]

ROOT = Path(__file__).resolve().parents[2]
G = 2


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("train_grpo", ROOT / "examples" / "train_grpo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_grpo"] = module
    spec.loader.exec_module(module)
    return module


def by_row(completions: list[Any], **kwargs: Any) -> list[float]:
    """A small reward that differs within every group, so the 2 episodes of a group never tie and the step has a
    gradient whatever the model plays (the mechanics are under test, not the learning)."""
    return [0.01 * (i % G) for i in range(len(completions))]


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())


def prompt_logprobs(server: ServerRecord, model: str, ids: list[int]) -> list[float]:
    """The logprob the served `model` gives each prompt token after the first (one forward, nothing sampled)."""
    answer = post(
        f"{server.base_url}/completions",
        {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0},
    )
    entries = answer["choices"][0]["prompt_logprobs"][1:]
    return [entry[str(token)]["logprob"] for entry, token in zip(entries, ids[1:], strict=True)]


def test_two_grpo_steps_on_the_real_model(vllm_server: ServerRecord, tmp_path: Path) -> None:
    example = load_example()
    seen: list[dict[str, Any]] = []

    config = example.RunConfig(
        steps=2,
        groups=1,
        generations=G,
        micro_batch=G,
        learning_rate=1e-3,
        lora_rank=8,
        lora_targets=("q_proj", "v_proj"),
        policy_max_tokens=32,
        concurrency=G,
    )
    train_tasks, held_out = example.split_tasks(example.win_in_one_tasks(), 64)
    assert not {t["id"] for t in train_tasks} & {t["id"] for t in held_out}
    assert not {t["env_seed"]["symmetry_class"] for t in train_tasks} & {
        t["env_seed"]["symmetry_class"] for t in held_out
    }, "mirror images stay on one side"
    steps, adapter, trainer = example.train(
        vllm_server,
        train_tasks,
        tmp_path,
        config,
        trainer_class=recording_trainer(seen),
        extra_rewards=[by_row],
        progress=print,
    )

    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(records) == 2 * G and all(r["status"] != "aborted" for r in records)
    samples = [episode_sample(r) for r in records]

    # Versions advance: step 0's episodes were sampled by the first pushed adapter, step 1's by the next one.
    first = int(steps[0]["version"])
    assert [s["version"] for s in steps] == [str(first), str(first + 1)]
    assert [s.call_versions for s in samples] == [[str(first)]] * G + [[str(first + 1)]] * G
    assert adapter == f"{vllm_server.model}@{first + 2}", "the final adapter (after step 2) is the one served"

    # The trainer's loss saw exactly the ledger's ids and mask.
    assert loss_rows(seen) == ledger_rows(samples)
    assert len(seen) == 2 and all(math.isfinite(b["loss"]) for b in seen)

    # The adapter trained (only LoRA weights), was saved per step, and vLLM serves the final one.
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert changed, "lora_B starts at zero; after two steps with a gradient it is not"
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step0", "step1", "step2"]
    with urllib.request.urlopen(f"{vllm_server.base_url}/models", timeout=60) as reply:
        served = {m["id"] for m in json.loads(reply.read())["data"]}
    assert {adapter, vllm_server.model} <= served
    ids = samples[-1].prompt_ids + samples[-1].response_ids
    base, tuned = prompt_logprobs(vllm_server, vllm_server.model, ids), prompt_logprobs(vllm_server, adapter, ids)
    assert base != tuned, "the served adapter is not the base model"


def test_the_notebook_runs_in_its_short_form(vllm_server: ServerRecord, tmp_path: Path, monkeypatch: Any) -> None:
    """notebooks/05-train-with-trl.ipynb, every cell, on the session's server: 1 step, 4 held-out positions."""
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "notebooks" / "05-train-with-trl.ipynb"
    kernels = tmp_path / "kernels" / "sparring-tests"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "sparring", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    for name, value in {
        "SPARRING_GRPO_SHORT": "1",
        "SPARRING_GRPO_OUT": str(tmp_path / "run"),
        "SPARRING_GRPO_BASE_URL": vllm_server.base_url,
        "SPARRING_GRPO_MODEL": vllm_server.model,
        "SPARRING_GRPO_MODEL_PATH": vllm_server.model_path,
    }.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=1800, kernel_name="sparring-tests", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", ()) if o.output_type == "error"]
    assert errors == []
    summary = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in summary] == [1]
    assert (tmp_path / "run" / "curve.png").stat().st_size > 0
    assert len((tmp_path / "run" / "after.jsonl").read_text().splitlines()) >= 4
