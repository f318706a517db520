"""`sparring fake-model`: the scripted OpenAI/vLLM-compatible model server (sparring.testing), for tests and demos."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `fake-model`; its flags and handler live with the server (sparring.testing)."""
    from sparring.testing.commands import register as register_fake_model

    register_fake_model(subparsers)
