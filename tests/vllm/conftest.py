"""One real vLLM server with the default model for the whole `-m vllm` session.

Started through `sparring.models.local` on a free port (never the user's recorded servers), so the
launcher itself is exercised; stopped at the end of the session. `SPARRING_VLLM_PYTHON` names an
interpreter that has vLLM when the test environment itself does not. It is started as
`sparring models up --lora` starts it: the token endpoint, vLLM's dev-mode RL endpoints (pause,
resume, weight version) and runtime LoRA adapters, which the weight-sync tests drive.
"""

from __future__ import annotations

import os
import sys
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
