"""verl's real agent-loop classes play sparring episodes and batch gateway sessions (verl 0.9.1, no GPU, no Ray).

Runs in .venv-verl (`scripts/test.sh --verl`; verl pins transformers<5.11, so not in .venv), hence the `verl`
marker. The model folder holds a real Hugging Face tokenizer speaking the scripted server's byte-level ids
and ChatML template (`sparring.testing.hf_tokenizer`) and a tiny Qwen2 config: verl loads both by path.
verl's own `LLMServerClient.generate` sends the policy's calls on, with only its Ray routing replaced by one
local replica that answers from the scripted server's token endpoint, as verl's vLLM replica would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import numpy as np
import pytest
import verl
from gateway_harness import running_gateway
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer, Qwen2Config
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopOutput,
    AgentLoopWorker,
    DictConfigWrap,
    _agent_loop_registry,
)
from verl.protocol import DataProto
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput

from sparring.core.errors import UsageError
from sparring.integrations import verl as sparring_verl
from sparring.testing import FakeModelServer, FakeTokenizer, Say, Script, TicTacToePlayer
from sparring.testing.hf_tokenizer import save_hf_tokenizer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE
from sparring.testing.tokenizer import ENDOFTEXT_ID, IM_END_ID, VOCAB_SIZE

pytestmark = pytest.mark.verl

OPENING = [{"role": "user", "content": "Let's play tic-tac-toe. You are X."}]
# X at 0, O at 3, two turns: X_PREFERENCE plays 4, O answers, X plays again; no winner yet, so truncated at 0.0.
TWO_TURNS = {
    "id": "two-turns",
    "env_seed": {"initial_moves": [{"position": 0, "mark": "X"}, {"position": 3, "mark": "O"}]},
    "limits": {"max_turns": 2},
}
LOOP_YAML = "- name: sparring\n  _target_: sparring.integrations.verl.SparringAgentLoop\n  env: tictactoe\n"
GLOBAL_STEPS = 5
PROMPT_LENGTH = RESPONSE_LENGTH = 4096


def objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def verl_config(model_dir: Path, loop_yaml: Path, *, response_length: int = RESPONSE_LENGTH) -> Any:
    """verl's own ppo_trainer.yaml, composed by hydra, pointed at the tiny model and the sparring loop."""
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_dir}",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.temperature=0.7",
                "actor_rollout_ref.rollout.calculate_log_probs=True",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loop_yaml}",
                "actor_rollout_ref.rollout.agent.default_agent_loop=sparring",
                f"data.max_prompt_length={PROMPT_LENGTH}",
                f"data.max_response_length={response_length}",
            ],
        )


class ScriptedReplica:
    """Stands in for verl's vLLM replica actor: `generate.remote(...)` answers from the scripted server's token
    endpoint and stamps verl's `global_steps`, as verl's server does. `served` keeps every call."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.served: list[dict[str, Any]] = []
        self.generate = SimpleNamespace(remote=self._generate)

    async def _generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any):
        ask = {"model": "policy", "prompt": prompt_ids, "return_token_ids": True, "logprobs": 0}
        ask["max_tokens"] = sampling_params["max_tokens"]
        async with aiohttp.ClientSession() as http, http.post(f"{self.base_url}/completions", json=ask) as reply:
            choice = (await reply.json())["choices"][0]
        logprobs = choice["logprobs"]["token_logprobs"]
        self.served.append({"prompt": prompt_ids, "ids": choice["token_ids"], "logprobs": logprobs})
        self.served[-1]["params"] = dict(sampling_params)
        return TokenOutput(
            token_ids=choice["token_ids"],
            log_probs=logprobs,
            stop_reason="completed",
            extra_fields={"global_steps": GLOBAL_STEPS},
        )


class LocalServerClient(LLMServerClient):
    """verl's own `LLMServerClient` (its `generate`), routing every call to one local replica instead of Ray's
    load balancer. `sessions[i]` is the sticky request id the i-th call was routed by."""

    def __init__(self, config: Any, replica: ScriptedReplica) -> None:
        super().__init__(config, load_balancer_handle=None)
        self.replica = replica
        self.sessions: list[str] = []

    async def _acquire_server(self, request_id: str, **extra: Any) -> tuple[str, Any]:
        self.sessions.append(request_id)
        return "local", self.replica

    def _release_server(self, server_id: str, request_id: str | None = None) -> None:
        pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_hf_tokenizer(tmp_path_factory.mktemp("model"))
    Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
        architectures=["Qwen2ForCausalLM"],
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loop_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verl") / "sparring_loop.yaml"
    path.write_text(LOOP_YAML)
    return path


@pytest.fixture
async def scripted(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeModelServer]:
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(players) as server:
        monkeypatch.setenv("SPARRING_USER_BASE_URL", server.base_url)
        monkeypatch.delenv("SPARRING_POLICY_BASE_URL", raising=False)
        yield server
        await sparring_verl.aclose()


def unpadded(batch: DataProto, row: int) -> dict[str, Any]:
    """One row of verl's batch without its padding: prompt, response, mask, logprobs and the reward's position."""
    tensors = batch.batch
    prompt_width = tensors["prompts"].shape[1]
    attention = tensors["attention_mask"][row]
    length = int(attention[prompt_width:].sum())
    prompt = tensors["prompts"][row][attention[:prompt_width].bool()].tolist()
    scores = tensors["rm_scores"][row].tolist()
    assert all(s == 0.0 for i, s in enumerate(scores) if i != max(length - 1, 0)), "the reward sits on the last token"
    return {
        "prompt": prompt,
        "response": tensors["responses"][row][:length].tolist(),
        "mask": tensors["response_mask"][row][:length].tolist(),
        "logprobs": tensors["rollout_log_probs"][row][:length].tolist(),
        "reward": scores[max(length - 1, 0)],
        "padding": tensors["response_mask"][row][length:].tolist(),
    }


def test_the_tokenizer_folder_speaks_the_scripted_servers_ids_and_template(model_dir: Path) -> None:
    hf, fake = AutoTokenizer.from_pretrained(model_dir), FakeTokenizer()
    tools = [{"type": "function", "function": {"name": "make_move", "parameters": {"type": "object"}}}]
    call = {"id": "c", "type": "function", "function": {"name": "make_move", "arguments": {"position": 4}}}
    conversation = [
        {"role": "system", "content": "Play X. é"},
        {"role": "user", "content": [{"type": "text", "text": "Your "}, {"type": "text", "text": "move."}]},
        {"role": "assistant", "content": "Centre.", "tool_calls": [call, call]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
        {"role": "tool", "tool_call_id": "c", "content": "taken"},
        {"role": "user", "content": "Again."},
    ]
    for messages, with_tools in ((conversation, tools), (conversation[1:2], None), (conversation[1:], tools)):
        for generation_prompt in (False, True):
            options = {"tools": with_tools, "add_generation_prompt": generation_prompt, "tokenize": False}
            text = hf.apply_chat_template(messages, **options)
            assert text == fake.apply_chat_template(messages, **options)
            ids = fake.encode(text)
            assert hf.encode(text, add_special_tokens=False) == ids
            assert hf.decode(ids, skip_special_tokens=True) == fake.decode(ids, skip_special_tokens=True)
    assert (hf.eos_token_id, hf.pad_token_id, len(hf)) == (IM_END_ID, ENDOFTEXT_ID, VOCAB_SIZE)


async def test_verls_worker_plays_rows_as_episodes_and_batches_exactly_what_its_server_sampled(
    scripted: FakeModelServer, model_dir: Path, loop_yaml: Path
) -> None:
    config = verl_config(model_dir, loop_yaml)
    client = LocalServerClient(config, ScriptedReplica(scripted.base_url))
    worker = AgentLoopWorker(config, llm_client=client)
    assert _agent_loop_registry["sparring"]["_target_"] == "sparring.integrations.verl.SparringAgentLoop"
    rows = DataProto.from_dict(
        non_tensors={
            "raw_prompt": objects([OPENING, OPENING]),
            "sparring_task": objects([json.dumps(TWO_TURNS), None]),
            "index": np.array([0, 1]),
        },
        meta_info={"global_steps": GLOBAL_STEPS},
    )
    batch = await worker.generate_sequences(rows)

    extra = batch.non_tensor_batch
    assert list(extra["sparring_status"]) == ["truncated", "completed"]
    assert list(extra["min_global_steps"]) == list(extra["max_global_steps"]) == [GLOBAL_STEPS] * 2
    served = client.replica.served
    for row, expected_reward in ((0, 0.0), (1, 1.0)):
        got = unpadded(batch, row)
        record_id = extra["sparring_record_id"][row]
        # verl's sticky request id is the episode's id: every call of one episode was routed by it.
        calls = [s for s, session in zip(served, client.sessions, strict=True) if session == record_id]
        assert len(calls) >= 2 and extra["sparring_weight_versions"][row] == [str(GLOBAL_STEPS)] * len(calls)
        # The trained tokens are exactly the ids verl's server generated, in order, with its logprobs.
        assert [t for t, m in zip(got["response"], got["mask"], strict=True) if m] == [
            i for c in calls for i in c["ids"]
        ]
        assert [lp for lp, m in zip(got["logprobs"], got["mask"], strict=True) if m] == pytest.approx(
            [lp for c in calls for lp in c["logprobs"]]
        )
        assert all(lp == 0.0 for lp, m in zip(got["logprobs"], got["mask"], strict=True) if not m)
        assert 0 in got["mask"], "the environment's and O's turns are in the response, masked 0"
        assert set(got["padding"]) <= {0}
        # One sequence: the row's prompt is the first call's prompt, and each call's prompt extends the row.
        sequence = got["prompt"] + got["response"]
        assert calls[0]["prompt"] == got["prompt"]
        assert all(sequence[: len(c["prompt"]) + len(c["ids"])] == c["prompt"] + c["ids"] for c in calls)
        assert got["reward"] == expected_reward
        # The row's own sampling params from verl reached verl's server, with sparring's max_tokens.
        params = calls[0]["params"]
        assert (params["temperature"], params["logprobs"], params["top_k"], params["max_tokens"]) == (
            0.7,
            True,
            -1,
            512,
        )
    assert extra["__num_turns__"][0] >= 5, "user, assistant, tool, user (O's move), assistant at least"


async def test_a_long_response_is_cut_and_an_aborted_episode_is_verls_empty_row(
    scripted: FakeModelServer, model_dir: Path, loop_yaml: Path
) -> None:
    config = verl_config(model_dir, loop_yaml, response_length=48)
    client = LocalServerClient(config, ScriptedReplica(scripted.base_url))
    loop = sparring_verl.SparringAgentLoop(
        trainer_config=DictConfigWrap(config),
        server_manager=client,
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        env="tictactoe",
    )
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}
    cut = await loop.run(sampling, raw_prompt=OPENING, index=3, sparring_task=TWO_TURNS)
    assert isinstance(cut, AgentLoopOutput)
    assert len(cut.response_ids) == len(cut.response_mask) == len(cut.response_logprobs) == 48
    assert cut.extra_fields["sparring_status"] == "truncated" and cut.reward_score == 0.0
    first = client.replica.served[0]
    assert cut.prompt_ids == first["prompt"] and len(first["ids"]) > 48, "the first reply alone is longer than 48"
    assert cut.response_ids == first["ids"][:48] and cut.response_mask == [1] * 48
    assert first["params"]["logprobs"] is True, "sparring asks verl's server for logprobs whatever the row says"

    bad = {"env_seed": {"initial_moves": [{"position": 9, "mark": "X"}]}}
    aborted = await loop.run(sampling, raw_prompt=OPENING, index=4, sparring_task=bad)
    assert (aborted.response_ids, aborted.response_mask, aborted.reward_score) == ([], [], 0.0)
    assert aborted.extra_fields["sparring_status"] == "aborted"
    assert aborted.prompt_ids == FakeTokenizer().apply_chat_template(OPENING, add_generation_prompt=True)
    assert (aborted.extra_fields["min_global_steps"], aborted.extra_fields["max_global_steps"]) == (None, None)

    with pytest.raises(UsageError, match="policy must be one of verl, settings"):
        sparring_verl.SparringAgentLoop(
            trainer_config=DictConfigWrap(config),
            server_manager=client,
            tokenizer=None,
            processor=None,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data),
            policy="vllm",
        )


async def chat(http: httpx.AsyncClient, session: dict[str, Any], messages: list[dict[str, Any]], **options: Any):
    reply = await http.post(
        f"{session['base_url']}/chat/completions", json={"model": "m", "messages": messages, **options}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"]


async def test_gateway_sessions_become_verls_batch_one_row_per_segment(model_dir: Path, loop_yaml: Path) -> None:
    opening = [{"role": "system", "content": "You play X."}, {"role": "user", "content": "Your move."}]
    steps = [Say("first idea"), Say("second idea"), Say("going on"), Say("after the summary"), Say("alone")]
    async with FakeModelServer({"policy": Script(steps)}) as fake:
        with running_gateway([fake.base_url]) as gateway:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
                records = []
                for reward in (1.0, 0.0):
                    session = (await http.post("/v1/sessions", json={"task_index": 4})).json()
                    if reward:
                        # two choices (two branches), the agent keeps the second and goes on, then rewrites its
                        # history (a new segment in the same branch): three segments in all
                        choices = await chat(http, session, opening, n=2)
                        history = [*opening, choices[1]["message"], {"role": "user", "content": "go on"}]
                        history.append((await chat(http, session, history))[0]["message"])
                        summary = [
                            *opening,
                            {"role": "assistant", "content": "(summary)"},
                            {"role": "user", "content": "?"},
                        ]
                        await chat(http, session, summary)
                    else:
                        await chat(http, session, opening)
                    finish = await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": reward})
                    records.append(finish.json())
    assert [len(r["trajectory"]["segments"]) for r in records] == [3, 1]

    worker = AgentLoopWorker(verl_config(model_dir, loop_yaml), llm_client=None)
    batch = await sparring_verl.gateway_batch(records, worker)

    assert len(batch) == 4
    extra = batch.non_tensor_batch
    assert list(extra["uid"]) == ["task_index:4"] * 4, "the sessions of one task are one GRPO group"
    assert list(extra["sparring_segment"]) == [0, 1, 2, 0] and list(extra["sparring_branch"]) == [0, 1, 1, 0]
    expected_rows = [(records[0], k) for k in range(3)] + [(records[1], 0)]
    for row, (record, segment_index) in enumerate(expected_rows):
        segment = record["trajectory"]["segments"][segment_index]
        start = min(
            (c["call"], c["prompt_len"]) for c in record["trajectory"]["calls"] if c["segment"] == segment_index
        )[1]
        got = unpadded(batch, row)
        assert got["prompt"] == segment["token_ids"][:start]
        assert got["response"] == segment["token_ids"][start:]
        assert got["mask"] == segment["loss_mask"][start:] and got["logprobs"] == pytest.approx(
            segment["logprobs"][start:]
        )
        assert got["reward"] == record["reward"] and extra["sparring_record_id"][row] == record["id"]
        assert extra["raw_prompt"][row] == opening
