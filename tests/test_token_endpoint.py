"""Token in, token out on vLLM's token endpoint: prompts rendered by the server, the fallback chain, per replica."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from engine_harness import episode_engine, players

from sparring.core.ledger import check_invariants
from sparring.models.client import EndpointConfig, ModelClient
from sparring.testing import FakeModelServer
from sparring.testing.tokenizer import FakeTokenizer, encode, render_messages

GENERATE = "/inference/v1/generate"


def policy_requests(server: FakeModelServer) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["model"] == "policy"]


def assert_one_exact_sequence(record: dict[str, Any], prompts: list[list[int]]) -> None:
    """One segment, and every prompt is the previous prompt plus what was generated for it, then more."""
    trajectory = record["trajectory"]
    assert check_invariants(trajectory) == [] and trajectory["prefix_mismatches"] == 0
    (segment,) = trajectory["segments"]
    calls = trajectory["calls"]
    assert [call["prompt_len"] for call in calls] == [len(p) for p in prompts]
    for call, prompt in zip(calls, prompts, strict=True):
        assert segment["token_ids"][: len(prompt)] == prompt
        assert segment["loss_mask"][len(prompt) : len(prompt) + call["completion_len"]] == [1] * call["completion_len"]
    for earlier, later in itertools.pairwise(prompts):
        assert later[: len(earlier)] == earlier


async def test_tito_without_a_tokenizer_renders_on_the_server_and_samples_on_the_token_endpoint() -> None:
    async with FakeModelServer(players()) as server, episode_engine(server, token_mode="tito") as engine:
        record = await engine.play({})
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    requests = policy_requests(server)
    assert {r["path"] for r in requests} == {GENERATE} and len(requests) == record["num_policy_calls"]
    assert all(r["body"]["output_mode"] == "text" and r["body"]["sampling_params"]["logprobs"] == 0 for r in requests)
    prompts = [r["body"]["token_ids"] for r in requests]
    assert_one_exact_sequence(record, prompts)
    # chatml renders history as it was generated, so each prompt is also what the server makes of the messages
    tools = engine.deps("tictactoe").toolsets["policy"].wire
    replies = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    for prompt, reply in zip(prompts, replies, strict=True):
        assert prompt == encode(render_messages(record["messages"][:reply], tools, True))


async def test_tito_keeps_one_segment_with_a_history_rewriting_template_and_no_local_tokenizer() -> None:
    async with (
        FakeModelServer(players(), template="rewriting") as server,
        episode_engine(server, token_mode="tito") as engine,
    ):
        record = await engine.play({})
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    assert_one_exact_sequence(record, [r["body"]["token_ids"] for r in policy_requests(server)])


async def test_tito_without_a_tokenizer_needs_a_server_that_renders() -> None:
    async with (
        FakeModelServer(players(), scale_out=False) as server,
        episode_engine(server, token_mode="tito") as engine,
    ):
        record = await engine.play({})
    assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
    assert record["error"]["type"] == "ScaleOutUnavailable"
    assert "HTTP 403" in record["error"]["message"] and "--enable-scale-out" in record["error"]["message"]
    assert "policy_tokenizer" in record["error"]["message"] and policy_requests(server) == []


@pytest.mark.parametrize(("scale_out", "path"), [(True, GENERATE), (False, "/v1/completions")])
async def test_a_local_tokenizer_renders_here_and_the_call_falls_back_to_completions(
    monkeypatch: pytest.MonkeyPatch, scale_out: bool, path: str
) -> None:
    import sparring.nodes.deps

    monkeypatch.setattr(sparring.nodes.deps, "load_tokenizer", lambda spec: FakeTokenizer())
    async with (
        FakeModelServer(players(), scale_out=scale_out) as server,
        episode_engine(server, token_mode="tito", policy_tokenizer="/a/local/folder") as engine,
    ):
        record = await engine.play({})
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    requests = policy_requests(server)
    key = "token_ids" if scale_out else "prompt"
    assert_one_exact_sequence(record, [r["body"][key] for r in requests if r["path"] == path])
    # without scale-out the first call learns it (one 403), every later call goes straight to /v1/completions
    assert [r["path"] for r in requests] == [path] * record["num_policy_calls"]


async def test_what_a_replica_serves_is_learnt_from_its_first_answer_and_kept_per_replica() -> None:
    async with (
        FakeModelServer({"policy": "Hello."}, scale_out=False) as old,
        FakeModelServer({"policy": "Hello."}) as new,
    ):
        client = ModelClient(EndpointConfig((old.base_url, new.base_url), "policy"))
        try:
            keys = {client._replica(f"episode-{i}"): f"episode-{i}" for i in range(40)}
            assert set(keys) == {old.base_url, new.base_url}
            for _ in range(2):
                for key in keys.values():
                    completion = await client.complete_tokens([1, 2, 3], episode_id=key, sampling={"max_tokens": 8})
                    assert completion.completion_token_ids == encode("Hello.<|im_end|>")
        finally:
            await client.aclose()
    assert client.scale_out == {old.base_url: False, new.base_url: True}
    assert [r["path"] for r in old.requests] == ["/v1/completions"] * 2
    assert [r["path"] for r in new.requests] == [GENERATE] * 2
