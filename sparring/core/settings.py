"""Episode settings: LangGraph's runtime context, so Studio shows them as a form and edits them per run.

Every field has a default and a description. Endpoint fields are flat (not nested objects) so they
stay editable in Studio and map one-to-one onto CLI flags and environment variables.

Every value is checked when settings are made (`EpisodeSettings(...)`, `dataclasses.replace`, and
LangGraph building the context from Studio's form), by the rules in `RULES`; a task row's `limits`
(core/task.py) are checked by the same rules, so a flag, a Studio field and a task row refuse the
same values with the same words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from sparring.core.errors import UsageError

ToolChoice = Literal["auto", "required", "none"]
TOOL_CHOICES = ("auto", "required", "none")
TOKEN_MODES = ("auto", "chat", "tito")
ROUTINGS = ("least_loaded", "rendezvous")


class SettingsError(UsageError):
    """A setting outside its rule; `setting` names the field (the CLI names the flag instead)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Rule:
    """What one setting accepts: a number range (finite always), a set of choices, or URLs."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    integer: bool = False
    choices: tuple[str, ...] | None = None
    urls: bool = False
    may_be_empty: bool = False
    nonempty: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule, or None (None values are always allowed where the type allows them)."""
        if value is None:
            return None
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.urls:
            return _url_problem(value, self.may_be_empty)
        if self.nonempty and not value:
            return "must not be empty"
        if self.ge is None and self.gt is None and self.le is None and not self.integer:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.integer and value != int(value):
            return f"must be a whole number, got {value!r}"
        if self.ge is not None and value < self.ge:
            return f"must be at least {self.ge:g}, got {value!r}"
        if self.gt is not None and value <= self.gt:
            return f"must be more than {self.gt:g}, got {value!r}"
        if self.le is not None and value > self.le:
            return f"must be at most {self.le:g}, got {value!r}"
        return None

    def field_constraints(self) -> dict[str, Any]:
        """The same rule as pydantic `Field` keywords (for the task row's `limits`)."""
        bounds = {"ge": self.ge, "gt": self.gt, "le": self.le}
        return {k: v for k, v in bounds.items() if v is not None} | ({"allow_inf_nan": False} if bounds else {})


def _url_problem(value: Any, may_be_empty: bool = False) -> str | None:
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, Sequence) or not (urls or may_be_empty):
        return "needs at least one URL"
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return f"must be an http(s) URL, got {url!r}"
        if "," in url or any(c.isspace() for c in url):
            return f"one URL per entry (no commas or spaces), got {url!r}"
    return None


POSITIVE_COUNT = Rule(ge=1, integer=True)
RULES: dict[str, Rule] = {
    "policy_base_urls": Rule(urls=True),
    "user_base_urls": Rule(urls=True),
    "policy_model": Rule(nonempty=True),
    "user_model": Rule(nonempty=True),
    "policy_temperature": Rule(ge=0),
    "user_temperature": Rule(ge=0),
    "policy_top_p": Rule(gt=0, le=1),
    "user_top_p": Rule(gt=0, le=1),
    "policy_max_tokens": POSITIVE_COUNT,
    "user_max_tokens": POSITIVE_COUNT,
    "policy_tool_choice": Rule(choices=TOOL_CHOICES),
    "user_tool_choice": Rule(choices=TOOL_CHOICES),
    "judge_base_urls": Rule(urls=True),
    "judge_model": Rule(nonempty=True),
    "judge_temperature": Rule(ge=0),
    "judge_max_tokens": POSITIVE_COUNT,
    "max_turns": POSITIVE_COUNT,
    "max_steps_per_turn": POSITIVE_COUNT,
    "max_user_steps_per_turn": POSITIVE_COUNT,
    "request_timeout_s": Rule(gt=0),
    "max_retries": Rule(ge=0, integer=True),
    "max_connections": POSITIVE_COUNT,
    "token_mode": Rule(choices=TOKEN_MODES),
    "routing": Rule(choices=ROUTINGS),
    "max_staleness": Rule(ge=0, integer=True),
    "env_url": Rule(urls=True),
    "allow_env_urls": Rule(urls=True, may_be_empty=True),
}


def _setting(default: Any, description: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass(kw_only=True)
class EpisodeSettings:
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
    judge_base_urls: list[str] | None = _setting(
        None,
        "Server(s) of the optional LLM judge of who made a failed episode fail, asked only where the rule "
        "checks blame the policy (core/judge.py); None: the rule checks alone.",
    )
    judge_model: str = _setting("judge", "Model name the judge server serves.")
    judge_api_key: str | None = _setting(None, "Bearer token for the judge server, if it needs one.")
    judge_temperature: float | None = _setting(0.0, "Sampling temperature of the judge (0: the same verdict again).")
    judge_max_tokens: int | None = _setting(256, "Most tokens the judge's answer may take.")
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
    routing: Literal["least_loaded", "rendezvous"] = _setting(
        "least_loaded",
        "How a new episode picks its replica (it then sticks to it, for the prefix cache): least_loaded, by "
        "episodes pinned there and the server's running/waiting requests and KV-cache usage; rendezvous, by "
        "a hash of its id (even counts, whatever the episodes' lengths).",
    )
    max_staleness: int | None = _setting(
        None,
        "Most weight versions the oldest policy token of an episode may lag the current version (the one "
        "sparring was last told: engine.weights.update, POST /v1/weights/update): before each policy call an "
        "episode past it ends aborted/stale. Versions are compared as whole numbers (trainer steps); labels "
        "that are not cannot be compared and bound nothing. None: no bound.",
    )
    token_mode: Literal["auto", "chat", "tito"] = _setting(
        "auto",
        "tito: the ledger's ids plus the rendered tail go to vLLM's token endpoint (/inference/v1/generate, "
        "else /completions): one exact sequence per episode; the tail is rendered by policy_tokenizer, else by "
        "the server (vLLM 0.32+ with --enable-scale-out); "
        "chat: /chat/completions with the ids read back (a re-rendered history may split segments); "
        "auto: tito when policy_tokenizer is known, else chat.",
    )
    policy_tokenizer: str | None = _setting(
        None,
        "Local folder with the policy model's tokenizer and chat template: tito renders prompts with it "
        "(without it the server renders them).",
    )
    env_url: str | None = _setting(
        None,
        "Base URL of the environment's server (env 'remote': a NeMo Gym resources server; 'openenv': an "
        "OpenEnv server); a task may name another only if it is in allow_env_urls.",
    )
    allow_env_urls: list[str] = _setting(
        [],
        "Servers a task's own env_url may name besides env_url; a task naming any other is refused "
        "(invalid_task) before anything is sent to it.",
    )

    def __post_init__(self) -> None:
        for name, rule in RULES.items():
            problem = rule.problem(getattr(self, name))
            if problem is not None:
                raise SettingsError(name, problem)
        for name in ("user_stop_tokens", "user_stop_strings"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SettingsError(name, f"must be a list of strings, got {value!r}")

    def sampling(
        self, role: Literal["policy", "user", "judge"], task_sampling: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What one role's calls send besides the messages; a task's own sampling wins for the policy."""
        if role == "judge":
            chosen = {"temperature": self.judge_temperature, "max_tokens": self.judge_max_tokens}
        elif role == "policy":
            chosen = {"temperature": self.policy_temperature, "top_p": self.policy_top_p}
            chosen["max_tokens"] = self.policy_max_tokens
            chosen |= task_sampling or {}
        else:
            chosen = {
                "temperature": self.user_temperature,
                "top_p": self.user_top_p,
                "max_tokens": self.user_max_tokens,
            }
        sampling = {key: value for key, value in chosen.items() if value is not None}
        if role == "user" and self.user_stop_strings:
            sampling["stop"] = list(self.user_stop_strings)
        return sampling


SETTING_NAMES = frozenset(f.name for f in fields(EpisodeSettings))
