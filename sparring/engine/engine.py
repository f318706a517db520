"""The Engine: what every face plays episodes through.

An Engine owns one compiled graph per environment (built on first use), the environments' shared
resources, and one pool of model clients keyed by endpoint (sampling travels per call, so requests
that only change temperature share a client). `play` runs one task and always returns a record:
an episode that crashes, names an unknown environment, or is interrupted by the caller still ends
with a typed `aborted` record, built in one place (`core.record.aborted_record`).

    engine = Engine(settings)                       # EpisodeSettings, or env name -> EpisodeSettings
    record = await engine.play({"env_seed": ...})   # one episode (env: the task's, else the engine's)
    engine.stats()                                  # per role: latency histogram; per replica: counts
    await engine.weights.pause("keep")              # weight sync on the policy servers (engine/weights.py)
    await engine.aclose()

The batch runner, the Ray workers, the HTTP service, `sparring run`, Studio's graphs and the
notebooks all play through an Engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sparring.core.errors import UsageError
from sparring.core.ids import new_episode_id
from sparring.core.record import aborted_record, build_record
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeInput
from sparring.engine.settings import with_overrides
from sparring.engine.weights import WeightOptions, WeightSync
from sparring.envs.base import Environment
from sparring.envs.registry import get_environment
from sparring.graphs.episode import EpisodeGraph, build_graph
from sparring.models.latency import LatencyHistogram
from sparring.models.pool import ClientPool, ReplicaStats
from sparring.models.replicas import ServerLoad
from sparring.nodes.deps import EpisodeDeps

SettingsSource = EpisodeSettings | Callable[[str], EpisodeSettings]
OnUpdate = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What an engine's model clients did: per-role call latency, per-role per-replica counts."""

    latency: dict[str, LatencyHistogram]
    replicas: ReplicaStats


class Engine:
    """Plays episodes: graphs per environment, model clients per endpoint, one aborted-record path."""

    def __init__(
        self,
        settings: SettingsSource | None = None,
        *,
        env: str = "tictactoe",
        environments: Mapping[str, Environment] | None = None,
        max_clients: int = 32,
        clients: ClientPool | None = None,
        weight_options: WeightOptions | None = None,
    ) -> None:
        """`settings`: one EpisodeSettings for every environment, or a function of the environment's name
        (`engine.settings.resolve_settings` resolves them as the CLI does); default: EpisodeSettings().
        `env` plays tasks that name none. `environments` are objects to use instead of the registry's;
        `clients` a pool of one's own (env-serve's, whose policy is an outside client).
        `weight_options`: how `weights` (pause / update / resume) behaves."""
        self.default_env = env
        self._settings_source = settings if settings is not None else EpisodeSettings()
        self._settings: dict[str, EpisodeSettings] = {}
        self._environments = dict(environments or {})
        self._graphs: dict[str, tuple[EpisodeGraph, EpisodeDeps]] = {}
        self.clients = clients if clients is not None else ClientPool(max_clients)
        self.weights = WeightSync(self.clients, lambda: self.settings_for(self.default_env), weight_options)
        """Weight sync on the policy servers of the default environment (engine/weights.py)."""

    def settings_for(self, env: str, overrides: Mapping[str, Any] | None = None) -> EpisodeSettings:
        """The settings episodes of `env` run with, with a caller's overrides applied (checked by the same rules)."""
        settings = self._settings.get(env)
        if settings is None:
            source = self._settings_source
            settings = self._settings[env] = source if isinstance(source, EpisodeSettings) else source(env)
        return with_overrides(settings, overrides)

    def environment(self, env: str) -> Environment:
        """The environment object `env` plays with (shared by its episodes)."""
        return self.deps(env).env

    def graph(self, env: str) -> EpisodeGraph:
        """The compiled episode graph of `env`, built on first use."""
        return self._built(env)[0]

    def deps(self, env: str) -> EpisodeDeps:
        """What `env`'s nodes share: the environment, its tool sets, the model clients."""
        return self._built(env)[1]

    def _built(self, env: str) -> tuple[EpisodeGraph, EpisodeDeps]:
        built = self._graphs.get(env)
        if built is None:
            environment = self._environments.get(env) or get_environment(env)
            deps = EpisodeDeps(environment, self.clients)
            built = self._graphs[env] = (build_graph(environment, deps), deps)
        return built

    async def play(
        self,
        task: dict[str, Any],
        *,
        env: str | None = None,
        settings: EpisodeSettings | Mapping[str, Any] | None = None,
        task_index: int | None = None,
        repeat_index: int = 0,
        episode_id: str | None = None,
        on_update: OnUpdate | None = None,
    ) -> dict[str, Any]:
        """Play one task; a crash anywhere (a bug, an unknown environment) still yields a record, `aborted`.

        `settings` are the episode's own (a whole EpisodeSettings, or overrides of the engine's for this
        environment). `on_update(node, update)` sees each node's update as it happens (a live transcript).
        Cancelling the call cancels the episode (no record); the batch runner turns that into one.
        """
        task_env: str | None = task.get("env")
        env = env or task_env or self.default_env
        episode_id = episode_id or new_episode_id(task_index, repeat_index)
        started = time.time()

        def aborted(stop_reason: str, error: Exception) -> dict[str, Any]:
            return aborted_record(
                task,
                env=env,
                episode_id=episode_id,
                stop_reason=stop_reason,
                error=error,
                task_index=task_index,
                repeat_index=repeat_index,
                started=started,
            )

        try:
            episode_settings = settings if isinstance(settings, EpisodeSettings) else self.settings_for(env, settings)
            graph = self.graph(env)
        except UsageError as exc:  # an unknown environment, settings outside their rules: this task fails
            return aborted("invalid_task", exc)
        graph_input: EpisodeInput = {"task": task, "episode_id": episode_id}
        try:
            if on_update is None:
                state = await graph.ainvoke(graph_input, context=episode_settings)
            else:
                state = await _stream(graph, graph_input, episode_settings, on_update)
        except Exception as exc:
            return aborted("internal_error", exc)
        finally:
            self.clients.release(episode_id)
            # The verify node released the episode's environment resources, unless the graph crashed or was
            # cancelled before it; shielded, so a cancelled episode still lets go of a server's session.
            await asyncio.shield(self.environment(env).close_episode(episode_id))
        return build_record(state, env=env, episode_id=episode_id, task_index=task_index, repeat_index=repeat_index)

    def record(self, state: dict[str, Any], *, env: str | None = None) -> dict[str, Any]:
        """The rollout record of an episode's final state (a run stepped through by hand, Studio's thread)."""
        return build_record(state, env=env or self.default_env, episode_id=state.get("episode_id") or "")

    def watch_policy_load(self, interval_s: float | None = None) -> None:
        """Read the default environment's policy servers' metrics in the background (adaptive concurrency)."""
        policy, _ = self.clients.clients(self.settings_for(self.default_env))
        policy.transport.watch_load(interval_s)

    def policy_load(self) -> ServerLoad | None:
        """The default environment's policy servers' latest metrics (fresh ones only): requests running and
        waiting summed over the replicas in rotation, the highest KV-cache usage; None: none yet."""
        policy, _ = self.clients.clients(self.settings_for(self.default_env))
        if policy.replicas is None:
            return None
        removed = self.clients.taken_out(policy.config.base_urls)
        loads = [load for url, load in policy.replicas.server_loads().items() if url not in removed]
        if not loads:
            return None
        return ServerLoad(
            running=sum(load.running for load in loads),
            waiting=sum(load.waiting for load in loads),
            kv_cache_usage=max(load.kv_cache_usage for load in loads),
            at=min(load.at for load in loads),
        )

    def stats(self) -> EngineStats:
        """Per role, the latency of every answered model call; per role and replica, its counts."""
        return EngineStats(latency=self.clients.latency(), replicas=self.clients.replica_stats())

    async def aclose(self) -> None:
        """Close the model clients, the weight sync's connections and every environment's pooled resources."""
        await self.weights.aclose()
        await self.clients.aclose()
        for _, deps in self._graphs.values():
            await deps.env.aclose()


async def _stream(
    graph: EpisodeGraph,
    graph_input: EpisodeInput,
    settings: EpisodeSettings,
    on_update: OnUpdate,
) -> dict[str, Any]:
    """Run while reporting every node's update; returns the final state."""
    state: dict[str, Any] = {}
    # langgraph annotates astream's items as `dict[str, Any] | Any`; with a list of modes each is a
    # (mode, chunk) tuple, its chunk a state ("values") or {node: update} ("updates").
    mode: str
    chunk: Any
    async for mode, chunk in graph.astream(graph_input, context=settings, stream_mode=["updates", "values"]):
        if mode == "values":
            state = chunk
        else:
            for node, update in chunk.items():
                on_update(node, update or {})
    return state
