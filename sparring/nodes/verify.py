"""verify: score the final state once, for completed and truncated episodes."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended


async def verify(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """The reward and its components; aborted episodes keep reward None (they are not scored)."""
    update: dict[str, Any] = {"reward": None, "reward_components": {}, "env_result": {}}
    if state.get("status") != "aborted":
        try:
            verdict = await deps.env.verify(state["env_state"], state["messages"])
        except Exception as exc:
            update.update(ended("aborted", "env_error", exc))
        else:
            update.update(reward=verdict.reward, reward_components=verdict.components, env_result=verdict.result)
    deps.clients.release(state["episode_id"])  # no more model calls: free its replica pins
    update["weight_version"] = deps.clients.clients(runtime.context)[0].control.version  # staleness is measured to it
    update["wall_s"] = time.time() - state["started_at"]
    return update
