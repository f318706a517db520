"""Where an environment's settings come from, in one place for every face.

In order, later wins: the environment's own settings (what it is meant to be played with), the
servers `sparring models up` started (and the policy's tokenizer folder, so token mode is tito),
the `SPARRING_*` variables (the optional judge's too: `SPARRING_JUDGE_BASE_URL`, `_MODEL`,
`_API_KEY`; never a local server: no judge unless one is named), then the caller's explicit values
(flags, a request, a script). The CLI, the service, the gateway, Ray workers and Studio all resolve
settings here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sparring.core.errors import UsageError
from sparring.core.settings import EpisodeSettings, SettingsError
from sparring.envs.registry import environment_class

ROLES = ("policy", "user")


def default_settings(env: str) -> EpisodeSettings:
    """The settings an environment is meant to be played with, before anything else is applied."""
    return EpisodeSettings(**environment_class(env).settings)


def resolve_settings(
    env: str,
    explicit: Mapping[str, Any] | None = None,
    *,
    require: tuple[str, ...] = ROLES,
    environ: Mapping[str, str] | None = None,
) -> EpisodeSettings:
    """The settings episodes of `env` run with; `explicit` are EpisodeSettings fields set by the caller.

    `require` names the roles whose endpoint must be found (the gateway needs only the policy; Studio
    none: it falls back to the defaults' 127.0.0.1:8000). A missing endpoint is a `UsageError` that
    says how to give one; a value outside its rule a `SettingsError` naming the setting.
    """
    environ = os.environ if environ is None else environ
    explicit = dict(explicit or {})
    changes: dict[str, Any] = {}
    local: dict[str, Any] | None = None
    given = {name for name, value in explicit.items() if value is not None}
    for role in ROLES:  # an explicit value is used as given (the rules refuse an empty one); a variable if set
        urls = explicit.pop(f"{role}_base_urls", None)
        if urls is None:
            urls = _split(environ.get(f"SPARRING_{role.upper()}_BASE_URL", ""))
        model = explicit.pop(f"{role}_model", None)
        if model is None:
            model = environ.get(f"SPARRING_{role.upper()}_MODEL") or None
        urls_given = f"{role}_base_urls" in given
        if not urls and not urls_given:
            local = _local_endpoints() if local is None else local
            if role in local:
                urls, model = [local[role]["base_url"]], local[role]["model"] if model is None else model
                if role == "policy" and Path(local[role]["model_path"]).is_dir():
                    changes["policy_tokenizer"] = local[role]["model_path"]
        if not urls and not urls_given:
            if role in require:
                raise UsageError(
                    f"no {role} model server: pass --{role}-base-url URL, set SPARRING_{role.upper()}_BASE_URL, "
                    "or start local ones with `sparring models up`"
                )
            continue
        changes[f"{role}_base_urls"] = list(urls)
        if model is not None:
            changes[f"{role}_model"] = model
        api_key = explicit.pop(f"{role}_api_key", None) or environ.get(f"SPARRING_{role.upper()}_API_KEY")
        if api_key:
            changes[f"{role}_api_key"] = api_key
    judge_urls = explicit.pop("judge_base_urls", None) or _split(environ.get("SPARRING_JUDGE_BASE_URL", ""))
    if judge_urls:  # optional: no judge unless one is named
        changes["judge_base_urls"] = list(judge_urls)
    for name in ("model", "api_key"):
        value = explicit.pop(f"judge_{name}", None) or environ.get(f"SPARRING_JUDGE_{name.upper()}")
        if value:
            changes[f"judge_{name}"] = value
    env_url = explicit.pop("env_url", None)
    if env_url is None:
        env_url = environ.get("SPARRING_ENV_URL") or None
    if env_url is not None:
        changes["env_url"] = env_url
    allowed = explicit.pop("allow_env_urls", None) or _split(environ.get("SPARRING_ALLOW_ENV_URLS", ""))
    if allowed:
        changes["allow_env_urls"] = list(allowed)
    changes.update({name: value for name, value in explicit.items() if value is not None})
    try:
        return replace(default_settings(env), **changes)
    except TypeError as exc:  # an unknown name: a bug in the caller, or a typo in a script
        raise UsageError(f"unknown setting: {exc}") from None


def with_overrides(settings: EpisodeSettings, overrides: Mapping[str, Any] | None) -> EpisodeSettings:
    """`settings` with some fields changed (a request's own), checked by the same rules."""
    if not overrides:
        return settings
    try:
        return replace(settings, **overrides)
    except TypeError as exc:
        raise SettingsError("(name)", str(exc)) from None


def _split(value: str) -> list[str]:
    """A comma-separated list of URLs (the variables' form: several replicas)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _local_endpoints() -> dict[str, Any]:
    from sparring.models.local import local_endpoints

    return local_endpoints()
