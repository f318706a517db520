"""Full tic-tac-toe episodes on the real default model served by vLLM's CPU build, in both token modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from real_server import server_config
from transformers import AutoTokenizer

from sparring import Engine
from sparring.core.ledger import check_invariants
from sparring.envs.tictactoe import LINES, TicTacToe
from sparring.models.local import ServerRecord

pytestmark = pytest.mark.vllm

EPISODES_PER_MODE = 2


@pytest.fixture(scope="module")
async def records(vllm_server: ServerRecord) -> AsyncIterator[dict[str, list[dict[str, Any]]]]:
    """Two episodes per token mode, played concurrently (vLLM batches them)."""
    config = server_config(TicTacToe(), vllm_server, max_turns=3, policy_max_tokens=96, user_max_tokens=64)
    engine = Engine(config)
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in ("tito", "chat"):
        mode_config = replace(config, token_mode=mode)
        results[mode] = list(
            await asyncio.gather(*(engine.play({}, settings=mode_config) for _ in range(EPISODES_PER_MODE)))
        )
    await engine.aclose()
    yield results


@pytest.fixture(scope="module")
def tokenizer(vllm_server: ServerRecord) -> Any:
    return AutoTokenizer.from_pretrained(vllm_server.model_path)


def all_records(records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for mode in records.values() for r in mode]


def test_episodes_end_with_a_recorded_status(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in all_records(records):
        assert record["status"] in ("completed", "truncated"), record["error"]
        assert record["num_policy_calls"] >= 1
        if record["stop_reason"] not in ("max_output_tokens", "context_length"):
            assert record["num_user_calls"] >= 1


def test_every_policy_call_has_ids_and_logprobs(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in all_records(records):
        trajectory = record["trajectory"]
        assert len(trajectory["calls"]) == record["num_policy_calls"]
        for call in trajectory["calls"]:
            assert call["prompt_len"] > 0 and call["completion_len"] > 0
        for segment in trajectory["segments"]:
            sampled = [lp for lp, m in zip(segment["logprobs"], segment["loss_mask"], strict=True) if m]
            assert sampled and all(lp <= 0.0 for lp in sampled) and any(lp < 0.0 for lp in sampled)


def test_ledger_invariants(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in all_records(records):
        trajectory = record["trajectory"]
        assert check_invariants(trajectory) == []
        trained = sum(sum(s["loss_mask"]) for s in trajectory["segments"])
        assert trained == record["usage"]["policy"]["completion_tokens"]
        assert len(trajectory["segments"]) == trajectory["prefix_mismatches"] + 1


def test_tito_episodes_are_one_exact_sequence(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in records["tito"]:
        assert len(record["trajectory"]["segments"]) == 1
        assert record["trajectory"]["prefix_mismatches"] == 0


def test_the_tito_ledger_decodes_to_the_transcript(records: dict[str, list[dict[str, Any]]], tokenizer: Any) -> None:
    for record in records["tito"]:
        decoded = tokenizer.decode(record["trajectory"]["segments"][0]["token_ids"])
        position = 0
        messages = record["messages"]
        last_prompted = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        for message in messages[: last_prompted + 1]:  # later messages never reached a policy prompt
            text = (message.get("content") or "").strip()
            if text:
                found = decoded.find(text, position)
                assert found >= 0, f"{message['actor']} message not in the ledger, in order: {text[:80]!r}"
                position = found + len(text)
            for call in message.get("tool_calls") or ():
                assert call["function"]["name"] in decoded


def test_status_and_reward_agree_with_the_final_board(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in all_records(records):
        board = record["env_result"]["board"]
        winner = next((board[a] for a, b, c in LINES if board[a] and board[a] == board[b] == board[c]), None)
        full = all(board)
        if winner:
            expected = ("win", 1.0) if winner == "X" else ("loss", 0.0)
        else:
            expected = ("draw", 0.5) if full else ("incomplete", 0.0)
        assert (record["env_result"]["game_result"], record["reward"]) == expected
        if winner or full:
            assert (record["status"], record["stop_reason"]) == ("completed", "env_done")
        else:
            assert record["stop_reason"] in ("max_turns", "context_length", "max_output_tokens", "user_stop")
