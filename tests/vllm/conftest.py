"""One real vLLM server with the default model for the whole `-m vllm` session.

Started through `sparring.models.local` on a free port (never the user's recorded servers), so the
launcher itself is exercised; stopped at the end of the session. `SPARRING_VLLM_PYTHON` names an
interpreter that has vLLM when the test environment itself does not. It serves runtime LoRA adapters
and vLLM's dev-mode RL endpoints (pause, resume, weight version), which the weight-sync tests drive.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from sparring.models.local import ROLES, ServerOptions, ServerRecord, free_port, start_server, stop_server

RL_ARGS = ("--enable-lora", "--max-lora-rank", "8", "--max-loras", "2")
RL_ENVIRONMENT = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def _progress(message: str, *, transient: bool = False) -> None:
    if not transient:
        print(f"[vllm fixture] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ServerRecord]:
    """The running server: `.base_url` (ends in /v1), `.model` (served name), `.model_path` (tokenizer folder)."""
    options = ServerOptions(python=os.environ.get("SPARRING_VLLM_PYTHON"), extra_args=RL_ARGS)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RL_ENVIRONMENT.items():
            patch.setenv(name, value)
        record = start_server(None, ROLES, free_port(), options, _progress)
    try:
        yield record
    finally:
        stop_server(record)
