"""Environments by name, for the CLI, the server, Studio and task files.

Names map to import paths, so listing them (a CLI's `--help`, its choices) imports no environment.
`register_environment` adds your own under a name every face then knows.
"""

from __future__ import annotations

import importlib

from sparring.core.errors import UsageError
from sparring.envs.base import Environment

_PATHS: dict[str, str] = {
    "calendar": "sparring.envs.calendar:Calendar",
    "openenv": "sparring.envs.openenv:OpenEnv",
    "remote": "sparring.envs.remote:Remote",
    "support-desk": "sparring.envs.support_desk:SupportDesk",
    "tictactoe": "sparring.envs.tictactoe:TicTacToe",
}
_CLASSES: dict[str, type[Environment]] = {}


def environment_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted({*_PATHS, *_CLASSES})


def register_environment(name: str, environment: type[Environment] | str) -> None:
    """Make `name` play `environment`: a subclass of Environment, or its `"module:Class"` import path."""
    if isinstance(environment, str):
        _PATHS[name] = environment
        _CLASSES.pop(name, None)
    else:
        _CLASSES[name] = environment


def environment_class(name: str) -> type[Environment]:
    """The class registered under `name`, imported on first use; a UsageError lists the known names."""
    found = _CLASSES.get(name)
    if found is not None:
        return found
    path = _PATHS.get(name)
    if path is None:
        raise UsageError(f"unknown environment {name!r}; known: {', '.join(environment_names())}")
    module, _, attribute = path.partition(":")
    found = _CLASSES[name] = getattr(importlib.import_module(module), attribute)
    return found


def get_environment(name: str) -> Environment:
    """A fresh environment object of the class registered under `name`."""
    return environment_class(name)()
