"""The rollout service's own settings: capacity, request bounds, shutdown, auth, weight sync.

Model endpoints, default limits and the environment servers a task may name (`--env-url`,
`--allow-env-url`) are not here: they come from `sparring.cli.options` exactly as for `sparring run`,
so the service plays the same episodes as the CLI. Every setting is checked when the settings are
made, and a bad one is refused naming its flag. This module loads no web framework: the CLI's parser
reads its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparring.web import DEFAULT_MAX_BODY_BYTES
from sparring.web.serving import at_least, seconds

# The flag that sets each bound, named in the error a bad value gets.
FLAGS = {
    "max_concurrent_episodes": "--max-concurrent-episodes",
    "max_queued_episodes": "--max-queued-episodes",
    "batch_concurrency": "--batch-concurrency",
    "max_batch_size": "--max-batch-size",
    "max_repeats": "--max-repeats",
    "max_turns": "--max-turns-limit",
    "max_steps_per_turn": "--max-steps-limit",
    "max_tokens": "--max-tokens-limit",
    "max_body_bytes": "--max-body-bytes",
}


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """What one `sparring serve` process allows; every bound is named in the error a request over it gets."""

    default_env: str = "tictactoe"
    max_concurrent_episodes: int = 64
    """Episodes playing at once across all requests; more wait in the queue."""
    max_queued_episodes: int = 256
    """Episodes admitted but waiting for a slot; a request that would go past this gets 429."""
    batch_concurrency: int = 64
    """Most episodes one batch request plays at once (its share of the slots)."""
    max_batch_size: int = 10_000
    max_repeats: int = 64
    max_turns: int = 50
    max_steps_per_turn: int = 16
    max_tokens: int = 8192
    """Most tokens one model call may generate (policy_max_tokens, user_max_tokens, max_output_tokens)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_grace_s: float = 30.0
    """On SIGTERM, in-flight episodes get this long to finish before they end as aborted."""
    api_key: str | None = None
    operator_key: str | None = None
    """Passes wherever the API key does; the gateway's routes also list every session to it."""
    readiness_timeout_s: float = 3.0
    max_sampling_variants: int = 16
    """Distinct sampling settings (each needs its own model clients) kept warm; idle ones beyond are closed."""
    pause_timeout_s: float = 300.0
    """A weight-sync pause with no resume for this long resumes on its own (a request may set its own)."""
    adapter_dirs: tuple[str, ...] = ()
    """Folders (on the vLLM machines) LoRA adapters may be loaded from; none: adapter updates are refused."""

    def __post_init__(self) -> None:
        minimums = dict.fromkeys(FLAGS, 1) | {"max_queued_episodes": 0}
        for name, minimum in minimums.items():
            at_least(FLAGS[name], getattr(self, name), minimum)
        at_least("max_sampling_variants", self.max_sampling_variants, 1)
        seconds("--shutdown-grace", self.shutdown_grace_s)
        seconds("readiness_timeout_s", self.readiness_timeout_s, positive=True)
        seconds("--pause-timeout", self.pause_timeout_s, positive=True)
