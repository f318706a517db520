"""Test doubles for sparring: a scripted OpenAI/vLLM-compatible model server and its tokenizer.

The server (`server`), its engine (`engine`: pauses, token pacing, weight versions), its response
shapes (`wire`), the child-process wrapper (`process`) and the CLI (`commands`) load lazily, so
importing the responders costs no aiohttp and `python -m sparring.testing.commands` runs once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sparring.testing.responders import (
    Call,
    Calls,
    ContextFull,
    Cut,
    Echo,
    Fail,
    Hang,
    Judge,
    ModelRequest,
    Say,
    Script,
    TicTacToePlayer,
)
from sparring.testing.tokenizer import FakeTokenizer

if TYPE_CHECKING:  # what __getattr__ loads on first use, named for the type checker
    from sparring.testing.engine import TokenGate
    from sparring.testing.errors import context_length_error
    from sparring.testing.process import FakeModelProcess
    from sparring.testing.server import FakeModelServer

_LAZY = {
    "FakeModelServer": "sparring.testing.server",
    "FakeModelProcess": "sparring.testing.process",
    "TokenGate": "sparring.testing.engine",
    "context_length_error": "sparring.testing.errors",
}

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
    "Judge",
    "ModelRequest",
    "Say",
    "Script",
    "TicTacToePlayer",
    "TokenGate",
    "context_length_error",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
