"""How one gateway treats sessions, what it adds to each call, and its bounds; every setting checked when made.

It loads no web framework: the CLI's parser reads the defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparring.web.serving import SettingError, at_least, seconds

DEFAULT_IDLE_TIMEOUT_S = 600.0
DEFAULT_KEEP_ENDED = 1000
DEFAULT_MAX_SESSIONS = 1000
DEFAULT_MAX_IDLE_TIMEOUT_S = 3600.0
DEFAULT_MAX_METADATA_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway treats sessions and what it adds to each call."""

    model: str
    sampling: dict[str, Any] = field(default_factory=dict)
    """Defaults for what an agent's request leaves unset (temperature, top_p, max_tokens)."""
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    keep_ended: int = DEFAULT_KEEP_ENDED
    """Ended sessions' records kept for GET (the most recent); 0 keeps none (they still go to `output`)."""
    output: Path | None = None
    env_url: str | None = None
    """The environment server of the episode settings (`--env-url`): a verifier may contact it."""
    allow_env_urls: tuple[str, ...] = ()
    """The other servers a verifier may contact (`--allow-env-url`); no others (core/outbound.py)."""
    max_sessions: int = DEFAULT_MAX_SESSIONS
    """Sessions open at once; one more gets 429 (with Retry-After: when the next idle one times out)."""
    max_idle_timeout_s: float = DEFAULT_MAX_IDLE_TIMEOUT_S
    """The longest idle timeout a session may ask for (`limits.idle_timeout_s`)."""
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
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
