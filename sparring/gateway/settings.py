"""How one gateway treats sessions and what it adds to each call."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_IDLE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway treats sessions and what it adds to each call."""

    model: str
    sampling: dict[str, Any] = field(default_factory=dict)
    """Defaults for what an agent's request leaves unset (temperature, top_p, max_tokens)."""
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    keep_ended: int = 1000
    output: Path | None = None
