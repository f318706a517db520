"""Episode settings: LangGraph's runtime context, so Studio shows them as a form and edits them per run.

Every field has a default and a description. Endpoint fields are flat (not nested objects) so they
stay editable in Studio and map one-to-one onto CLI flags and environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ToolChoice = Literal["auto", "required", "none"]


def _setting(default: Any, description: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass(kw_only=True)
class EpisodeConfig:
    """How episodes run: the two model endpoints, the limits and the user's rules."""

    policy_base_urls: list[str] = _setting(
        ["http://127.0.0.1:8000/v1"], "Policy model server(s); several URLs are replicas, chosen per episode."
    )
    policy_model: str = _setting("policy", "Model name the policy server serves.")
    policy_api_key: str | None = _setting(None, "Bearer token for the policy server, if it needs one.")
    policy_temperature: float | None = _setting(1.0, "Sampling temperature of the policy (None: server default).")
    policy_top_p: float | None = _setting(None, "Nucleus sampling of the policy (None: server default).")
    policy_max_tokens: int | None = _setting(512, "Most tokens one policy call may generate.")
    policy_tool_choice: ToolChoice = _setting("auto", "tool_choice sent with every policy call.")
    user_base_urls: list[str] = _setting(["http://127.0.0.1:8000/v1"], "Simulated-user model server(s).")
    user_model: str = _setting("user", "Model name the user server serves.")
    user_api_key: str | None = _setting(None, "Bearer token for the user server, if it needs one.")
    user_temperature: float | None = _setting(0.7, "Sampling temperature of the simulated user.")
    user_top_p: float | None = _setting(None, "Nucleus sampling of the simulated user (None: server default).")
    user_max_tokens: int | None = _setting(256, "Most tokens one user call may generate.")
    user_tool_choice: ToolChoice = _setting(
        "auto", "tool_choice for the user's first step in a turn; its last allowed step is always 'none'."
    )
    max_turns: int = _setting(5, "Turns (a policy reply and a user message) before the episode is truncated.")
    max_steps_per_turn: int = _setting(
        1, "Policy model calls per turn; after tool results with no steps left the turn passes to the user."
    )
    max_user_steps_per_turn: int = _setting(
        2, "User model calls per turn; the last one is asked for text (tool_choice 'none')."
    )
    user_stop_tokens: list[str] = _setting(
        ["###STOP###"], "Exact strings that end the episode when the user writes one; never shown to the policy."
    )
    user_stop_strings: list[str] = _setting(
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "Strings that cut a user reply short (a small model running on into its chat template's next turn); "
        "sent as the request's `stop` and never part of the user's text.",
    )
    user_words_after_move: bool = _setting(
        True,
        "Ask the user for words after a tool call that ended its turn (the environment's turn_over); "
        "False hands the turn straight back to the policy, whose observation shows what changed.",
    )
    request_timeout_s: float = _setting(120.0, "Seconds one model call may take before it is retried.")
    max_retries: int = _setting(3, "Retries of a model call on 5xx, connection errors and time-outs (never 4xx).")
    max_connections: int = _setting(
        1024, "Most requests in flight (and pooled connections) per model endpoint; more wait for a free slot."
    )
    token_mode: Literal["auto", "chat", "tito"] = _setting(
        "auto",
        "tito: the ledger's ids plus the rendered tail go to /completions (one exact sequence per episode); "
        "chat: /chat/completions with the ids read back (a re-rendered history may split segments); "
        "auto: tito when policy_tokenizer is known, else chat.",
    )
    policy_tokenizer: str | None = _setting(
        None, "Local folder with the policy model's tokenizer and chat template (needed for tito)."
    )
    env_url: str | None = _setting(
        None, "Base URL of a NeMo Gym-shaped resources server (env 'remote'); a task's own env_url wins."
    )
