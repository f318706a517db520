"""Endpoint and limit settings shared by every command that runs episodes: `run`, `collect`, `serve`, `gateway`.

One set of flags and `SPARRING_*` variables, read in one place, so every face is configured alike.
"""

from __future__ import annotations

import argparse
from typing import Any

from sparring.core.errors import UsageError
from sparring.core.settings import EpisodeSettings, SettingsError
from sparring.engine.settings import resolve_settings


def add_episode_options(parser: argparse.ArgumentParser) -> None:
    """Endpoint and limit flags shared by every command that runs episodes."""
    endpoints = parser.add_argument_group("model endpoints (default: $SPARRING_* variables, then `sparring models up`)")
    for role in ("policy", "user"):
        endpoints.add_argument(
            f"--{role}-base-url",
            action="append",
            metavar="URL",
            help=f"OpenAI-compatible base URL of the {role} model (repeat for replicas)",
        )
        endpoints.add_argument(f"--{role}-model", metavar="NAME", help=f"model name of the {role} server")
        endpoints.add_argument(f"--{role}-api-key", metavar="KEY", help=f"bearer token for the {role} server")
    judge = parser.add_argument_group(
        "optional LLM judge of who made a failed episode fail (asked only where the rule checks blame the "
        "policy; default: $SPARRING_JUDGE_* variables, else none)"
    )
    judge.add_argument("--judge-base-url", action="append", metavar="URL", help="OpenAI-compatible base URL")
    judge.add_argument("--judge-model", metavar="NAME", help="model name of the judge server (default: judge)")
    judge.add_argument("--judge-api-key", metavar="KEY", help="bearer token for the judge server")
    judge.add_argument("--judge-max-tokens", type=int, metavar="N", help="most tokens of its answer (default 256)")
    parser.add_argument(
        "--env-url",
        metavar="URL",
        help="server of the 'remote' (NeMo Gym resources server) or 'openenv' (OpenEnv server) environment "
        "(default: $SPARRING_ENV_URL)",
    )
    parser.add_argument(
        "--allow-env-url",
        action="append",
        metavar="URL",
        help="a server a task's own env_url may name besides --env-url (repeatable; default "
        "$SPARRING_ALLOW_ENV_URLS, comma-separated); a task naming any other ends invalid_task (serve and the "
        "gateway: 403), nothing sent",
    )
    endpoints.add_argument(
        "--routing",
        choices=["least_loaded", "rendezvous"],
        help="how a new episode picks a replica: least_loaded (default; by load, from /metrics where served) "
        "or rendezvous (hash of its id); it then sticks to it",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-turns", type=int)
    limits.add_argument("--max-steps-per-turn", type=int)
    limits.add_argument("--max-user-steps-per-turn", type=int)
    limits.add_argument(
        "--user-stop-token",
        action="append",
        metavar="TOKEN",
        help="exact string that ends the episode (repeatable; default ###STOP###)",
    )
    limits.add_argument("--user-tool-choice", choices=["auto", "required", "none"])
    limits.add_argument("--policy-tool-choice", choices=["auto", "required", "none"])
    limits.add_argument("--policy-max-tokens", type=int)
    limits.add_argument("--timeout", type=float, dest="request_timeout_s", help="seconds per model call")
    limits.add_argument(
        "--token-mode",
        choices=["auto", "chat", "tito"],
        help="tito: exact token-in-token-out (prompts rendered by --policy-tokenizer, else by the server); "
        "default auto: tito when the policy tokenizer is known, else chat",
    )
    limits.add_argument(
        "--max-staleness",
        type=int,
        metavar="N",
        help="most weight versions an episode's oldest policy token may lag the current version (whole-number "
        "versions); an episode past it ends aborted/stale before its next policy call (default: no bound)",
    )
    limits.add_argument(
        "--policy-tokenizer",
        metavar="DIR",
        help="the policy model's local folder (tokenizer + chat template): tito renders prompts with it",
    )


FLAG_OF_SETTING = {
    "request_timeout_s": "--timeout",
    "user_stop_tokens": "--user-stop-token",
    "policy_base_urls": "--policy-base-url",
    "user_base_urls": "--user-base-url",
    "judge_base_urls": "--judge-base-url",
    "allow_env_urls": "--allow-env-url",
}
_FLAG_SETTINGS = (
    "max_turns",
    "max_steps_per_turn",
    "max_user_steps_per_turn",
    "user_tool_choice",
    "policy_tool_choice",
    "policy_max_tokens",
    "request_timeout_s",
    "token_mode",
    "policy_tokenizer",
    "env_url",
    "judge_max_tokens",
    "routing",
    "max_staleness",
)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The EpisodeSettings fields the episode flags set (only those given)."""
    explicit: dict[str, Any] = {}
    for role in ("policy", "user", "judge"):
        urls = getattr(args, f"{role}_base_url", None)
        if urls is not None:  # repeatable, and each may be comma-separated like the variables: several replicas
            explicit[f"{role}_base_urls"] = [part.strip() for url in urls for part in url.split(",") if part.strip()]
        for name in ("model", "api_key"):
            value = getattr(args, f"{role}_{name}", None)
            if value is not None:  # an empty one too: the rules refuse it by name
                explicit[f"{role}_{name}"] = value
    for name in _FLAG_SETTINGS:
        value = getattr(args, name, None)
        if value is not None:
            explicit[name] = value
    if getattr(args, "user_stop_token", None):
        explicit["user_stop_tokens"] = args.user_stop_token
    if getattr(args, "allow_env_url", None):
        explicit["allow_env_urls"] = args.allow_env_url
    return explicit


def settings_from_args(
    args: argparse.Namespace, env: str, require: tuple[str, ...] = ("policy", "user")
) -> EpisodeSettings:
    """Settings from the flags, then $SPARRING_* variables, then `sparring models up` (engine/settings.py).

    A value outside its rule is a UsageError naming the flag (`--max-turns: must be at least 1, got 0`).
    """
    try:
        return resolve_settings(env, flag_settings(args), require=require)
    except SettingsError as exc:
        flag = FLAG_OF_SETTING.get(exc.setting, "--" + exc.setting.replace("_", "-"))
        raise UsageError(f"{flag}: {exc.problem}") from None
