"""The graphs `langgraph dev` serves to LangGraph Studio: one per registered environment.

Each is the one graph builder's output for that environment, on one Engine's environments and model
clients, bound under the environment's name with `-` as `_` (langgraph.json lists them; a test keeps
the two in step). Its settings form (the runtime context, `EpisodeSettings`) defaults to what
`sparring run --env NAME` would use at the moment `langgraph dev` starts (`resolve_settings`): the
environment's own settings, the servers `sparring models up` started (with the policy's tokenizer,
so token mode is tito), the `SPARRING_*` variables, else 127.0.0.1:8000. Studio edits them per
assistant or per run, and the same rules check them (a bad value is refused when the run starts).

A person plays the simulated user by pausing before `user` (interrupt_before), setting the state's
`human_turn` and resuming: see nodes/human.py.
"""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from typing import Any, get_type_hints

from sparring.core.settings import EpisodeSettings
from sparring.engine.engine import Engine
from sparring.engine.settings import resolve_settings
from sparring.envs.registry import environment_names
from sparring.graphs.episode import EpisodeGraph, build_graph


def graph_variable(env_name: str) -> str:
    """The module attribute (and langgraph.json graph id) of an environment's Studio graph."""
    return env_name.replace("-", "_")


def studio_settings(env_name: str) -> EpisodeSettings:
    """The settings `sparring run --env NAME` would use with no flags; 127.0.0.1:8000 when no server is known."""
    return resolve_settings(env_name, require=())


def settings_schema(env_name: str) -> type[EpisodeSettings]:
    """EpisodeSettings with `studio_settings` as its defaults, so Studio's form opens on them."""
    defaults = studio_settings(env_name)
    hints = get_type_hints(EpisodeSettings)
    specs: list[tuple[str, Any, Any]] = []  # make_dataclass's own type; typeshed types field() as its default
    for setting in fields(EpisodeSettings):
        value = getattr(defaults, setting.name)
        # Lists become tuples: a plain default (unlike a default_factory) shows in the JSON schema Studio reads.
        default = tuple(value) if isinstance(value, list) else value
        specs.append((setting.name, hints[setting.name], field(default=default, metadata=setting.metadata)))
    schema = make_dataclass(
        f"{graph_variable(env_name).title().replace('_', '')}Settings", specs, bases=(EpisodeSettings,), kw_only=True
    )
    schema.__doc__ = (
        f"How {env_name} episodes run: model endpoints, limits and the user's rules "
        f"(defaults: what `sparring run --env {env_name}` would use when `langgraph dev` started)."
    )
    schema.__module__ = __name__
    return schema


ENGINE = Engine(studio_settings)
"""The environments and model clients every Studio graph shares."""


def studio_graph(env_name: str) -> EpisodeGraph:
    """The episode graph for one environment, with its settings form."""
    deps = ENGINE.deps(env_name)
    return build_graph(deps.env, deps, context_schema=settings_schema(env_name))


globals().update({graph_variable(name): studio_graph(name) for name in environment_names()})
