"""How nodes end an episode: a typed status, a stop reason and, for failures, the error."""

from __future__ import annotations

from typing import Any

from sparring.core.state import EpisodeState, Status


def ended(status: Status, stop_reason: str, error: BaseException | None = None) -> dict[str, Any]:
    """The state update that ends the episode (routing sends it to verify)."""
    update: dict[str, Any] = {"status": status, "stop_reason": stop_reason}
    if error is not None:
        update["error"] = {"type": type(error).__name__, "message": str(error)}
    return update


def add_usage(state: EpisodeState, role: str, prompt_tokens: int, completion_tokens: int) -> dict[str, dict[str, int]]:
    """The usage totals with one more call of `role` counted."""
    usage = dict(state.get("usage") or {})
    before = usage.get(role) or {"prompt_tokens": 0, "completion_tokens": 0}
    usage[role] = {
        "prompt_tokens": before["prompt_tokens"] + prompt_tokens,
        "completion_tokens": before["completion_tokens"] + completion_tokens,
    }
    return usage


def length_stop_reason(completion_tokens: int, max_tokens: int | None) -> str:
    """A reply cut at the per-call budget is max_output_tokens; a cut anywhere else is the context running out."""
    return "max_output_tokens" if max_tokens is not None and completion_tokens >= max_tokens else "context_length"


def call_id_prefix(state: EpisodeState, role: str) -> str:
    """Ids for tool calls sparring parsed itself: unique within the episode, readable in transcripts."""
    return f"{role}_{state['num_policy_calls' if role == 'policy' else 'num_user_calls']}"
