"""Test doubles for sparring: a scripted OpenAI/vLLM-compatible model server and its tokenizer.

The server classes load lazily, so `python -m sparring.testing.fake_model` runs the module only once.
"""

from __future__ import annotations

from typing import Any

from sparring.testing.responders import (
    Call,
    Calls,
    ContextFull,
    Cut,
    Echo,
    Fail,
    Hang,
    ModelRequest,
    Say,
    Script,
    TicTacToePlayer,
)
from sparring.testing.tokenizer import FakeTokenizer

_SERVER_NAMES = frozenset({"FakeModelServer", "FakeModelProcess", "context_length_error"})

__all__ = [
    "Call",
    "Calls",
    "ContextFull",
    "Cut",
    "Echo",
    "Fail",
    "FakeModelProcess",
    "FakeModelServer",
    "FakeTokenizer",
    "Hang",
    "ModelRequest",
    "Say",
    "Script",
    "TicTacToePlayer",
    "context_length_error",
]


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from sparring.testing import fake_model

        return getattr(fake_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
