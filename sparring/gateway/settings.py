"""How one gateway treats sessions and what it adds to each call; every setting checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparring.web.outbound import check_url
from sparring.web.serving import at_least, seconds

DEFAULT_IDLE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway treats sessions and what it adds to each call."""

    model: str
    sampling: dict[str, Any] = field(default_factory=dict)
    """Defaults for what an agent's request leaves unset (temperature, top_p, max_tokens)."""
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    keep_ended: int = 1000
    """Ended sessions' records kept for GET (the most recent); 0 keeps none (they still go to `output`)."""
    output: Path | None = None
    env_urls: tuple[str, ...] = ()
    """Resources servers a `remote` verifier may contact (`--env-url`, `--allow-env-url`); no others."""

    def __post_init__(self) -> None:
        seconds("--idle-timeout", self.idle_timeout_s, positive=True)
        at_least("--keep-ended", self.keep_ended, 0)
        for url in self.env_urls:
            check_url("--allow-env-url", url)
