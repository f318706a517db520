"""Nodes return updates and never change state in place, so every checkpoint holds its own step's truth.

LangGraph writes checkpoints in the background by default (durability "async"): a node that changed
a value it was given (the ledger, a message, the environment's state) would leak a later step's data
into an earlier checkpoint, and Studio's time travel would show it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver

import sparring.graphs.episode as episode
from sparring.core.ledger import call_span, materialize
from sparring.graphs.episode import build_graph
from sparring.testing import Call, Say, Script, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE

GAMES: dict[str, dict[str, Any]] = {
    "chat": {},
    "tito": {"token_mode": "tito"},
    "rewriting template": {"token_mode": "chat"},
}


def players() -> dict[str, Any]:
    """X wins on its fourth move; its second try is an illegal move (O's cell), so a tool error and a retry."""
    x_moves = Script([Call("make_move", {"position": p}) for p in (4, 8, 0, 2, 6)], after=Say("(end of script)"))
    return {"policy": x_moves, "user": TicTacToePlayer(O_PREFERENCE)}


def summary(values: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on with the live run at that step (deep-copied: later steps can't touch it)."""
    return copy.deepcopy(
        {
            key: values.get(key)
            for key in ("ledger", "messages", "user_messages", "env_state", "usage", "limits", "num_policy_calls")
        }
    )


@pytest.mark.parametrize("mode", list(GAMES))
async def test_every_checkpoint_holds_exactly_its_own_step(make_harness, mode: str) -> None:
    template = "rewriting" if mode == "rewriting template" else "chatml"
    async with make_harness(players(), template=template) as h:
        graph = build_graph(h.deps.env, h.deps, checkpointer=SlowSaver())
        config = {"configurable": {"thread_id": f"checkpoints-{mode}"}}
        settings = {**GAMES[mode]}
        context = h.config if not settings else type(h.config)(**{**h.config.__dict__, **settings})
        live: dict[int, dict[str, Any]] = {}
        async for chunk in graph.astream(
            {"task": {}, "episode_id": f"ep-{mode}"}, config, context=context, stream_mode="checkpoints"
        ):
            live[chunk["metadata"]["step"]] = summary(chunk["values"])
        saved = [snapshot async for snapshot in graph.aget_state_history(config)]
        final = saved[0].values
        assert final["status"] == "completed" and final["reward"] == 1.0
        assert len(final["ledger"]) == final["num_policy_calls"] == 5
        if mode == "rewriting template":
            assert materialize(final["ledger"])["prefix_mismatches"] > 0, "this game must exercise new segments"
        assert len(saved) == len(live) > 10
        for snapshot in saved:
            step = snapshot.metadata["step"]
            assert summary(snapshot.values) == live[step], f"checkpoint of step {step} differs from that step"
            ledger = snapshot.values.get("ledger") or []
            spans = [
                m.response_metadata["token_span"]
                for m in snapshot.values.get("messages") or ()
                if isinstance(m, AIMessage)
            ]
            assert spans == [call_span(entry) for entry in ledger], f"step {step}: ledger and messages disagree"


class SlowSaver(InMemorySaver):
    """A checkpointer that, like a database, takes a moment before it serialises what it was given."""

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        await asyncio.sleep(0.02)
        return self.put(config, checkpoint, metadata, new_versions)


Node = Callable[..., Awaitable[dict[str, Any]]]


def guarded(node: Node, seen: dict[str, int]) -> Node:
    """The node, failing if it changes anything in the state it was given (deep-compared before and after)."""

    async def node_that_must_not_mutate(state: dict[str, Any], runtime: Any, **bound: Any) -> dict[str, Any]:
        before = copy.deepcopy(state)
        update = await node(state, runtime, **bound)
        changed = sorted(key for key in before.keys() | state.keys() if before.get(key) != state.get(key))
        assert not changed, f"{node.__name__} changed its input state in place: {changed}"
        seen[node.__name__] = seen.get(node.__name__, 0) + 1
        return update

    return node_that_must_not_mutate


@pytest.mark.parametrize("mode", list(GAMES))
async def test_no_node_changes_the_state_it_was_given(make_harness, monkeypatch, mode: str) -> None:
    seen: dict[str, int] = {}
    for name in ("seed", "policy", "run_tools", "user", "verify"):
        monkeypatch.setattr(episode, name, guarded(getattr(episode, name), seen))
    template = "rewriting" if mode == "rewriting template" else "chatml"
    async with make_harness(players(), template=template) as h:
        h.graph = build_graph(h.deps.env, h.deps)
        record = await h.play(**GAMES[mode])
    assert record["status"] == "completed", record["error"]
    assert set(seen) == {"seed", "policy", "run_tools", "user", "verify"}
    assert seen["policy"] == record["num_policy_calls"] and seen["user"] == record["num_user_calls"]
    assert any(m["role"] == "tool" and "already taken" in m["content"] for m in record["messages"]), "no tool error"
