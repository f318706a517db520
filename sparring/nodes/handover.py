"""The hand-over: the user's turn is over, and the turn passes to the policy (or the episode ends at max_turns).

The `user` node hands over after delivering the user's words, `user_tools` after the user's last
allowed step or a move that ends its turn without words. Both call `hand_over`, which records it
explicitly (`turn_holder: "policy"`); the routers read that field, and the drawn graph labels those
edges "hand over". A step of its own would show the same thing but cost a LangGraph superstep per turn
(bench/langgraph_floor.py: about a tenth of the whole per-call cost on tic-tac-toe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from sparring.core.state import EpisodeState
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import ended


def hand_over(
    state: EpisodeState, deps: EpisodeDeps, env_state: Any, delivered: Sequence[BaseMessage]
) -> dict[str, Any]:
    """Hand the turn back to the policy with what the user said, then the environment's note and observation.

    At max_turns the episode ends instead. The environment first settles what the user left undone
    (`settle_user_turn`), so the policy never gets a position where it cannot act. Its note and the
    observation are their own message (actor env), so the record keeps who said what.
    """
    if state["turn"] >= state["limits"]["max_turns"]:
        return {"messages": delivered, **ended("truncated", "max_turns")}
    update: dict[str, Any] = {}
    notes = []
    settled = deps.env.settle_user_turn(env_state)
    if settled is not None:  # e.g. a move played for a user that could not make one
        env_state = update["env_state"] = settled.state
        if settled.content:  # a settlement may have nothing to tell the policy (calendar: a request counted)
            notes.append(settled.content)
        if deps.env.is_done(env_state):
            note = HumanMessage(content=settled.content, additional_kwargs={"actor": "env"})
            return {**update, "messages": [*delivered, note], **ended("completed", "env_done")}
    observation = deps.env.observe(env_state, "policy")
    if observation:
        notes.append(observation)
    if notes:
        delivered = [*delivered, HumanMessage(content="\n\n".join(notes), additional_kwargs={"actor": "env"})]
    return {
        **update,
        "messages": delivered,
        "turn_start": len(state["messages"]) + len(delivered),
        "policy_steps": 0,
        "user_steps": 0,
        "turn_holder": "policy",
    }
