"""Environments by name, for the CLI, the server and task files."""

from __future__ import annotations

from collections.abc import Callable

from sparring.envs.base import Environment
from sparring.envs.calendar import Calendar
from sparring.envs.remote import Remote
from sparring.envs.support_desk import SupportDesk
from sparring.envs.tictactoe import TicTacToe

ENVIRONMENTS: dict[str, Callable[[], Environment]] = {
    "calendar": Calendar,
    "remote": Remote,
    "support-desk": SupportDesk,
    "tictactoe": TicTacToe,
}


def get_environment(name: str) -> Environment:
    """A fresh environment object, or a clear error listing the known names."""
    try:
        factory = ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(sorted(ENVIRONMENTS))}") from None
    return factory()
