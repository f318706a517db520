"""Smoke test of the real server: token ids and logprobs come back for chat and token-in completions."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from sparring.models.local import ServerRecord

pytestmark = pytest.mark.vllm


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_chat_and_completions_return_token_ids(vllm_server: ServerRecord) -> None:
    messages = [{"role": "user", "content": "Say hello in three words."}]
    chat = post(
        f"{vllm_server.base_url}/chat/completions",
        {
            "model": vllm_server.model,
            "messages": messages,
            "max_tokens": 16,
            "temperature": 0,
            "return_token_ids": True,
            "logprobs": True,
        },
    )
    choice = chat["choices"][0]
    assert chat["prompt_token_ids"] and choice["token_ids"]
    assert len(choice["logprobs"]["content"]) == len(choice["token_ids"])
    assert choice["message"]["content"]

    # Token in, token out: the same prompt as ids gives the same greedy completion.
    completion = post(
        f"{vllm_server.base_url}/completions",
        {
            "model": "policy",  # role alias served by the same server
            "prompt": chat["prompt_token_ids"],
            "max_tokens": 16,
            "temperature": 0,
            "return_token_ids": True,
            "logprobs": 0,
        },
    )
    echoed = completion["choices"][0]
    assert echoed["prompt_token_ids"] == chat["prompt_token_ids"]
    assert echoed["token_ids"] == choice["token_ids"]
    assert len(echoed["logprobs"]["token_logprobs"]) == len(echoed["token_ids"])
