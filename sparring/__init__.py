"""sparring: multi-turn RL rollouts on one LangGraph graph, with exact token data.

The public API (docs/python-api.md); everything else is private:

    from sparring import Engine, EpisodeSettings, CollectSpec, collect, export, verify
    from sparring import Environment, Verdict, ToolSpec, ToolResult, register_environment, resolve_settings
    from sparring import SparringError

Names load on first use, so `import sparring` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "sparring.engine.engine",
    "EngineStats": "sparring.engine.engine",
    "EpisodeSettings": "sparring.core.settings",
    "resolve_settings": "sparring.engine.settings",
    "CollectSpec": "sparring.engine.collect",
    "CollectResult": "sparring.engine.collect",
    "collect": "sparring.engine.collect",
    "export": "sparring.engine.export",
    "verify": "sparring.engine.verify",
    "Environment": "sparring.envs.base",
    "Verdict": "sparring.envs.base",
    "ToolSpec": "sparring.tools.specs",
    "ToolResult": "sparring.tools.specs",
    "register_environment": "sparring.envs.registry",
    "SparringError": "sparring.core.errors",
}
__all__ = [
    "CollectResult",
    "CollectSpec",
    "Engine",
    "EngineStats",
    "Environment",
    "EpisodeSettings",
    "SparringError",
    "ToolResult",
    "ToolSpec",
    "Verdict",
    "__version__",
    "collect",
    "export",
    "register_environment",
    "resolve_settings",
    "verify",
]

if TYPE_CHECKING:
    from sparring.core.errors import SparringError
    from sparring.core.settings import EpisodeSettings
    from sparring.engine.collect import CollectResult, CollectSpec, collect
    from sparring.engine.engine import Engine, EngineStats
    from sparring.engine.export import export
    from sparring.engine.settings import resolve_settings
    from sparring.engine.verify import verify
    from sparring.envs.base import Environment, Verdict
    from sparring.envs.registry import register_environment
    from sparring.tools.specs import ToolResult, ToolSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sparring' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
