"""verify: score the final state once, for completed and truncated episodes, say who made it fail,
and let the environment release what it held for the episode (every episode that reaches the end of
the graph passes here).

Every episode, aborted ones included, gets its `attribution` here (core/attribution.py): the rule
checks plus the environment's own (`Environment.attribution_rules`), then, where the rules leave the
label `agent` and a judge is configured, the optional LLM judge (core/judge.py).
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from sparring.core.attribution import (
    DEFAULT_STOP_TOKENS,
    Attribution,
    AttributionCheckError,
    AttributionRules,
    Episode,
    decide,
    find_reasons,
    reason,
    verdict,
)
from sparring.core.errors import ModelCallError
from sparring.core.judge import RESPONSE_FORMAT, judge_failed, judge_messages, read_answer
from sparring.core.record import message_record, view_record
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.core.task import parse_task
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended


async def verify(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """The reward and its components, then the attribution; aborted episodes keep reward None (not scored)."""
    update: dict[str, Any] = {"reward": None, "reward_components": {}, "env_result": {}}
    try:
        if state.get("status") != "aborted":
            try:
                verdict = await deps.env.verify(state["env_state"], state["messages"])
            except Exception as exc:
                update.update(ended("aborted", "env_error", exc))
            else:
                update.update(reward=verdict.reward, reward_components=verdict.components, env_result=verdict.result)
    finally:
        await deps.env.close_episode(state["episode_id"])  # the episode is over, however it ended
    update["attribution"] = await attribution_of({**state, **update}, runtime.context, deps)
    deps.clients.release(state["episode_id"])  # no more model calls: free its replica pins
    update["weight_version"] = deps.clients.clients(runtime.context)[0].control.version  # staleness is measured to it
    update["wall_s"] = time.time() - state["started_at"]
    return update


async def attribution_of(state: dict[str, Any], settings: EpisodeSettings, deps: EpisodeDeps) -> Attribution:
    """Who made the episode fail. A check of the environment's that breaks is that environment's bug: the
    episode keeps its record, labelled `env` with the error as its reason."""
    record = {
        "status": state.get("status"),
        "stop_reason": state.get("stop_reason"),
        "reward": state.get("reward"),
        "reward_components": state.get("reward_components") or {},
        "env_result": state.get("env_result") or {},
        "error": state.get("error"),
        "messages": [message_record(m) for m in state.get("messages") or ()],
        "user_messages": [view_record(m) for m in state.get("user_messages") or ()],
    }
    stop_tokens = (state.get("limits") or {}).get("user_stop_tokens", DEFAULT_STOP_TOKENS)
    aborted = record["status"] == "aborted"  # never scored, maybe never seeded: the rules alone say `env`
    try:
        task = None if aborted else parse_task(state["task"])
        rules = AttributionRules() if task is None else deps.env.attribution_rules(task, state.get("env_state"))
        episode = Episode.from_record(record, stop_tokens=stop_tokens, rules=rules)
        reasons = find_reasons(episode, rules)
    except AttributionCheckError as exc:
        return {"label": "env", "reasons": [reason("attribution_error", "env", str(exc))], "judge": None}
    client = deps.clients.judge(settings)
    if client is None or task is None or decide(episode, reasons) != "agent":
        return verdict(episode, reasons)
    model = settings.judge_model
    try:
        reply = await client.chat(
            judge_messages(deps.env.judge_prompt(task), record),
            episode_id=state["episode_id"],
            sampling={**settings.sampling("judge"), "response_format": RESPONSE_FORMAT},
        )
    except ModelCallError as exc:
        found, judged = judge_failed(model, f"{type(exc).__name__}: {exc}")
    else:
        found, judged = read_answer(reply.text, model, len(record["messages"]))
    return verdict(episode, [*reasons, found], judged)
