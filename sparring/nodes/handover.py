"""handover: the user's turn is over; the turn passes to the policy, or the episode ends at max_turns.

A step of its own, so the drawn graph shows the hand-over and no node reaches into another's job:
`user` delivers the user's words, `user_tools` runs its moves, and this node closes the turn.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended


async def handover(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """Hand the turn back to the policy, after the environment's note and observation for it.

    At max_turns the episode ends instead. The environment first settles what the user left undone
    (`settle_user_turn`), so the policy never gets a position where it cannot act. Its note and the
    observation are their own message (actor env), so the record keeps who said what.
    """
    if state["turn"] >= state["limits"]["max_turns"]:
        return ended("truncated", "max_turns")
    env_state = state["env_state"]
    update: dict[str, Any] = {}
    notes = []
    settled = deps.env.settle_user_turn(env_state)
    if settled is not None:  # e.g. a move played for a user that could not make one
        env_state = update["env_state"] = settled.state
        if settled.content:  # a settlement may have nothing to tell the policy (calendar: a request counted)
            notes.append(settled.content)
        if deps.env.is_done(env_state):
            note = HumanMessage(content=settled.content, additional_kwargs={"actor": "env"})
            return {**update, "messages": [note], **ended("completed", "env_done")}
    observation = deps.env.observe(env_state, "policy")
    if observation:
        notes.append(observation)
    delivered = [HumanMessage(content="\n\n".join(notes), additional_kwargs={"actor": "env"})] if notes else []
    return {
        **update,
        "messages": delivered,
        "turn_start": len(state["messages"]) + len(delivered),
        "policy_steps": 0,
        "user_steps": 0,
    }
