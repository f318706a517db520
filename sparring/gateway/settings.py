"""How one gateway treats sessions, what it adds to each call, and its bounds; every setting checked when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparring.web.outbound import check_url
from sparring.web.serving import SettingError, at_least, seconds

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
    max_sessions: int = 1000
    """Sessions open at once; one more gets 429 (with Retry-After: when the next idle one times out)."""
    max_idle_timeout_s: float = 3600.0
    """The longest idle timeout a session may ask for (`limits.idle_timeout_s`)."""
    max_metadata_bytes: int = 256 * 1024
    """Most bytes of a session's `task` and `metadata` together, as JSON (finish's metadata merged in)."""
    operator_key: str | None = None
    """Its bearer lists every session; anyone else lists only the sessions they opened."""

    def __post_init__(self) -> None:
        seconds("--max-idle-timeout", self.max_idle_timeout_s, positive=True)
        seconds("--idle-timeout", self.idle_timeout_s, positive=True)
        if self.idle_timeout_s > self.max_idle_timeout_s:
            raise SettingError(
                f"--idle-timeout: {self.idle_timeout_s:g} s is above --max-idle-timeout {self.max_idle_timeout_s:g} s"
            )
        at_least("--keep-ended", self.keep_ended, 0)
        at_least("--max-sessions", self.max_sessions, 1)
        at_least("--max-metadata-bytes", self.max_metadata_bytes, 1)
        for url in self.env_urls:
            check_url("--allow-env-url", url)
