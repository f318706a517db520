"""slime's custom generate function, against a stand-in for slime's `Sample` (slime is not on the package index).

The stand-in has the fields and status values slime's `slime/utils/types.py` has (read at 624b824) and the
length rules slime checks before training; a stand-in for SGLang's native `/generate` (what slime's rollout
engines serve) answers from the scripted model server, so the policy is sampled where slime's weights would be.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sparring.integrations import slime
from sparring.testing import FakeModelServer, TicTacToePlayer
from sparring.testing.hf_tokenizer import save_hf_tokenizer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

TASK = {"id": "from-centre", "limits": {"max_turns": 2}}


@dataclass
class Sample:
    """slime's Sample, the fields a generate function touches (names, types and defaults as slime has them)."""

    class Status(Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    group_index: int | None = None
    index: int | None = None
    rollout_id: int | None = None
    prompt: str | list[dict[str, str]] = ""
    tokens: list[int] = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    label: str | None = None
    reward: float | dict[str, Any] | None = None
    loss_mask: list[int] | None = None
    weight_versions: list[str] = field(default_factory=list)
    rollout_log_probs: list[float] | None = None
    remove_sample: bool = False
    status: Status = Status.PENDING
    metadata: dict = field(default_factory=dict)
    session_id: str | None = None

    def check_lengths(self) -> None:
        """What slime asserts before it trains on a sample."""
        assert self.loss_mask is not None and len(self.loss_mask) == self.response_length
        assert self.rollout_log_probs is not None and len(self.rollout_log_probs) == self.response_length
        assert 0 < self.response_length < len(self.tokens)


@asynccontextmanager
async def sglang_over(server: FakeModelServer, version: str) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """SGLang's `/generate` shape (input_ids in; output_token_logprobs, finish_reason, weight_version out),
    answered by the scripted server's token endpoint. Yields the port and what it served."""
    served: list[dict[str, Any]] = []

    async def generate(request: web.Request) -> web.Response:
        body = await request.json()
        params = body["sampling_params"]
        assert body["return_logprob"] is True and isinstance(body["input_ids"], list)
        ask = {"model": "policy", "prompt": body["input_ids"], "return_token_ids": True, "logprobs": 0}
        ask["max_tokens"] = params.get("max_new_tokens", 64)
        async with aiohttp.ClientSession() as session, session.post(f"{server.base_url}/completions", json=ask) as r:
            choice = (await r.json())["choices"][0]
        served.append({"input_ids": body["input_ids"], "ids": choice["token_ids"], "params": params})
        logprobs = choice["logprobs"]["token_logprobs"]
        pairs = [[lp, tok, None] for lp, tok in zip(logprobs, choice["token_ids"], strict=True)]
        meta = {"output_token_logprobs": pairs, "finish_reason": {"type": choice["finish_reason"]}}
        return web.json_response({"text": choice["text"], "meta_info": {**meta, "weight_version": version}})

    app = web.Application()
    app.add_routes([web.post("/generate", generate)])
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield sock.getsockname()[1], served
    finally:
        await runner.cleanup()


@pytest.fixture
async def scripted(monkeypatch) -> AsyncIterator[FakeModelServer]:
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(players) as server:
        monkeypatch.setenv("SPARRING_POLICY_BASE_URL", server.base_url)
        monkeypatch.setenv("SPARRING_USER_BASE_URL", server.base_url)
        monkeypatch.setenv("SPARRING_ENV", "tictactoe")
        yield server
        await slime.aclose()


async def test_generate_samples_the_policy_in_slimes_engine_and_fills_the_sample(
    scripted, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("SPARRING_SLIME_POLICY", "sglang")
    pytest.importorskip("transformers", reason="a local policy tokenizer needs transformers (scripts/install.sh)")
    checkpoint = str(save_hf_tokenizer(tmp_path))  # the scripted server's tokenizer as slime's hf_checkpoint
    async with sglang_over(scripted, version="7") as (port, served):
        args = argparse.Namespace(sglang_router_ip="127.0.0.1", sglang_router_port=port, hf_checkpoint=checkpoint)
        sample = Sample(index=3, group_index=1, prompt=slime_prompt(TASK))
        params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 512, "stop": None}
        out = await slime.generate(args, sample, params, evaluation=False)

    assert out is sample and sample.status is Sample.Status.TRUNCATED, "two turns, no winner yet"
    assert sample.reward == 0.0
    sample.check_lengths()
    # Every trained token is one slime's engine generated, with the logprob it reported, in order.
    generated = [tok for call in served for tok in call["ids"]]
    response = sample.tokens[-sample.response_length :]
    assert [t for t, m in zip(response, sample.loss_mask, strict=True) if m] == generated
    assert sum(sample.loss_mask) == len(generated) < sample.response_length, "O's turn is in the response, masked 0"
    assert all(lp == 0.0 for lp, m in zip(sample.rollout_log_probs, sample.loss_mask, strict=True) if not m)
    # Each call's prompt is the sample's tokens so far: one sequence, prompt = the first call's prompt.
    assert sample.tokens[: len(served[0]["input_ids"])] == served[0]["input_ids"]
    assert all(sample.tokens[: len(call["input_ids"])] == call["input_ids"] for call in served)
    assert len(sample.tokens) - sample.response_length == len(served[0]["input_ids"])
    assert served[0]["params"]["max_new_tokens"] == 512
    assert sample.metadata["sparring"]["num_turns"] == 2
    assert sample.weight_versions == ["7"] * len(served), "one version per engine call, as SGLang reported it"


async def test_generate_with_sparrings_own_policy_endpoint_and_a_winning_game(scripted, monkeypatch) -> None:
    monkeypatch.setenv("SPARRING_SLIME_POLICY", "settings")
    sample = Sample(index=0, prompt=[{"role": "user", "content": "Let's play. You are X."}])
    await slime.generate(argparse.Namespace(), sample, {"temperature": 0.5, "max_new_tokens": 512})
    assert (sample.status, sample.reward) == (Sample.Status.COMPLETED, 1.0)
    sample.check_lengths()
    assert sample.weight_versions == [], "the scripted server in chat mode names no version"
    assert sample.response.splitlines()[0] == 'make_move({"position": 4})'


async def test_a_sample_without_policy_tokens_is_aborted_without_reward(scripted, monkeypatch) -> None:
    monkeypatch.setenv("SPARRING_SLIME_POLICY", "settings")
    bad = {"env_seed": {"initial_moves": [{"position": 9, "mark": "X"}]}}
    sample = Sample(index=1, metadata={"sparring_task": bad})
    await slime.generate(argparse.Namespace(), sample, {})
    assert (sample.status, sample.reward, sample.tokens) == (Sample.Status.ABORTED, None, [])


async def test_slime_args_without_a_router_say_what_to_set(scripted, monkeypatch) -> None:
    monkeypatch.setenv("SPARRING_SLIME_POLICY", "sglang")
    with pytest.raises(ValueError, match="SPARRING_SLIME_POLICY=settings"):
        await slime.generate(argparse.Namespace(), Sample(index=0, prompt="hi"), {})


def slime_prompt(task: dict[str, Any]) -> str:
    import json

    return json.dumps(task)
