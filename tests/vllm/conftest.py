"""One real vLLM server with the default model for the whole `-m vllm` session.

Started through `sparring.models.local` on a free port (never the user's recorded servers), so the
launcher itself is exercised; stopped at the end of the session. `SPARRING_VLLM_PYTHON` names an
interpreter that has vLLM when the test environment itself does not. It is started as
`sparring models up --lora` starts it: the token endpoint, vLLM's dev-mode RL endpoints (pause,
resume, weight version) and runtime LoRA adapters, which the weight-sync tests drive.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from sparring.models.local import ROLES, ServerOptions, ServerRecord, free_port, start_server, stop_server

LORA_RANK = 8
"""The largest LoRA rank the session's server takes (the GRPO test trains rank 8)."""


def _progress(message: str, *, transient: bool = False) -> None:
    if not transient:
        print(f"[vllm fixture] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ServerRecord]:
    """The running server: `.base_url` (ends in /v1), `.model` (served name), `.model_path` (tokenizer folder)."""
    options = ServerOptions(python=os.environ.get("SPARRING_VLLM_PYTHON"), lora=True, max_lora_rank=LORA_RANK)
    record = start_server(None, ROLES, free_port(), options, _progress)
    try:
        yield record
    finally:
        stop_server(record)


def _post(url: str, body: dict[str, object] | None = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data or b"", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def reset_server_state(server: ServerRecord) -> None:
    """Undo what a test left on the shared server: a pause, a version label, loaded adapters, cached
    prefixes. Weight versions must increase, so a test that starts from version 1 needs "default" back."""
    _post(f"{server.root_url}/resume")
    _post(f"{server.root_url}/update_weight_version", {"new_version": "default"})
    _post(f"{server.root_url}/reset_prefix_cache?reset_running_requests=true")
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=120) as response:
        models = json.loads(response.read())["data"]
    for adapter in (m["id"] for m in models if m.get("parent")):
        _post(f"{server.base_url}/unload_lora_adapter", {"lora_name": adapter})


@pytest.fixture(autouse=True)
def fresh_server_state(request: pytest.FixtureRequest) -> None:
    """Each test that uses the session's server starts from its launch state, whatever ran before it."""
    if "vllm_server" in request.fixturenames:
        reset_server_state(request.getfixturevalue("vllm_server"))
