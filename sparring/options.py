"""Endpoint and limit settings shared by every command that runs episodes: `run`, `collect`, `serve`, `gateway`.

One set of flags and `SPARRING_*` variables, read in one place, so every face is configured alike.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from sparring.envs.registry import get_environment
from sparring.graphs.context import EpisodeConfig


class UsageError(Exception):
    """A command line that cannot run; the message says what to pass instead."""


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
    parser.add_argument(
        "--env-url",
        metavar="URL",
        help="resources server of the 'remote' environment (default: $SPARRING_ENV_URL; a task's env_url wins)",
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
        help="tito: exact token-in-token-out (needs the policy tokenizer); default auto",
    )
    limits.add_argument(
        "--policy-tokenizer",
        metavar="DIR",
        help="the policy model's local folder (tokenizer + chat template), for tito",
    )


def episode_config(
    args: argparse.Namespace, env_name: str, roles: tuple[str, ...] = ("policy", "user")
) -> EpisodeConfig:
    """Settings from flags, then $SPARRING_* variables, then servers started by `sparring models up`.

    `roles` are the endpoints that must be found (the gateway needs only the policy).
    """
    changes: dict[str, Any] = {}
    local = _local_endpoints()
    for role in roles:
        urls = getattr(args, f"{role}_base_url") or _env_list(f"SPARRING_{role.upper()}_BASE_URL")
        model = getattr(args, f"{role}_model") or os.environ.get(f"SPARRING_{role.upper()}_MODEL")
        if not urls and role in local:
            urls, model = [local[role]["base_url"]], model or local[role]["model"]
            if role == "policy" and Path(local[role]["model_path"]).is_dir():
                changes["policy_tokenizer"] = local[role]["model_path"]
        if not urls:
            raise UsageError(
                f"no {role} model server: pass --{role}-base-url URL, set SPARRING_{role.upper()}_BASE_URL, "
                "or start local ones with `sparring models up`"
            )
        changes[f"{role}_base_urls"] = urls
        if model:
            changes[f"{role}_model"] = model
        api_key = getattr(args, f"{role}_api_key") or os.environ.get(f"SPARRING_{role.upper()}_API_KEY")
        if api_key:
            changes[f"{role}_api_key"] = api_key
    for name in (
        "max_turns",
        "max_steps_per_turn",
        "max_user_steps_per_turn",
        "user_tool_choice",
        "policy_tool_choice",
        "policy_max_tokens",
        "request_timeout_s",
        "token_mode",
    ):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if args.policy_tokenizer:
        changes["policy_tokenizer"] = args.policy_tokenizer
    if args.user_stop_token:
        changes["user_stop_tokens"] = args.user_stop_token
    env_url = getattr(args, "env_url", None) or os.environ.get("SPARRING_ENV_URL")
    if env_url:
        changes["env_url"] = env_url
    return replace(default_config(env_name), **changes)


def default_config(env_name: str) -> EpisodeConfig:
    """The settings an environment is meant to be played with (flags and variables override them)."""
    return replace(EpisodeConfig(), **get_environment(env_name).settings)


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [part.strip() for part in value.split(",") if part.strip()]


def _local_endpoints() -> dict[str, Any]:
    from sparring.models.local import local_endpoints

    return local_endpoints()
