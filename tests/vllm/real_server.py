"""Episode settings for the real-model tests: the one place that points an environment at the session's server."""

from __future__ import annotations

from typing import Any

from sparring.core.settings import EpisodeSettings
from sparring.envs.base import Environment
from sparring.models.local import ServerRecord


def server_config(env: Environment, server: ServerRecord, **settings: Any) -> EpisodeSettings:
    """The environment's own settings, both roles on the session's server (tito via its tokenizer); `settings` win."""
    return EpisodeSettings(
        **{
            **env.settings,
            "policy_base_urls": [server.base_url],
            "user_base_urls": [server.base_url],
            "policy_model": server.model,
            "user_model": server.model,
            "policy_tokenizer": server.model_path,
            "request_timeout_s": 300,
            **settings,
        }
    )
