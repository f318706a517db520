"""The policy's seat for an outside client (what env-serve and the OpenEnv harness stand on), without openenv.

The client here is the test: it acts for the policy while the graph plays everything else, the
simulated user on the scripted model server included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sparring import EpisodeSettings
from sparring.engine.settings import default_settings
from sparring.envserve.bridge import SAY, EpisodeOver, PolicyBridge, Seat, serving_engine
from sparring.testing import FakeModelServer, ModelRequest, Say, Script, TicTacToePlayer


@asynccontextmanager
async def seats(env: str, user: Any, **settings: Any) -> AsyncIterator[Any]:
    """`seat(task)`: a started seat of `env`, its user played by `user` on the scripted server."""
    async with FakeModelServer({"user": user}) as models:
        base = default_settings(env)
        config = EpisodeSettings(
            **{
                **{name: getattr(base, name) for name in base.__dataclass_fields__},
                "user_base_urls": [models.base_url],
                "request_timeout_s": 30.0,
                "policy_tokenizer": "/nowhere",  # tito is forced off: the policy has no tokens to take
                **settings,
            }
        )
        engine, bridge = serving_engine(env, config)
        counter = iter(range(1000))

        async def seat(task: dict[str, Any]) -> tuple[Seat, Any]:
            taken = Seat(engine, bridge, env, task, f"ep-{next(counter)}")
            return taken, await taken.start()

        try:
            yield seat
        finally:
            await engine.aclose()


async def test_a_client_plays_x_through_the_seat_and_gets_the_record() -> None:
    async with seats("tictactoe", TicTacToePlayer(preference=(0, 1, 3, 5, 7))) as seat:
        taken, opening = await seat({})
        assert [tool.name for tool in opening.tools] == ["make_move", SAY.name]
        assert "You are X and you move first" in opening.messages[-1]["content"]
        moves = []
        progress = opening
        for cell in (4, 4, 8, 2, 6):
            progress = await taken.act("make_move", {"position": cell})
            moves.append((cell, progress.tool_error))
            if progress.record is not None:
                break
    assert moves == [(4, False), (4, True), (8, False), (2, False), (6, False)], "the taken cell is a tool error"
    record = progress.record
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
    assert record["trajectory"]["calls"] == [], "no tokens: the policy's model is outside"
    tool_results = [m for m in progress.messages if m["role"] == "tool"]
    assert tool_results and '"winner":"X"' in tool_results[-1]["content"]
    assert taken.env_state["winner"] == "X"


async def test_words_go_to_the_user_and_the_users_stop_ends_the_episode() -> None:
    user = Script([Say("I need a refund for order 7."), Say("Thanks. ###STOP###")])
    async with seats("support-desk", user) as seat:
        taken, opening = await seat({"env_seed": {"task_id": "sd-01"}})
        assert "I need a refund for order 7." in opening.messages[-1]["content"]
        reply = await taken.say("Which item?")
        assert reply.record is not None and reply.record["stop_reason"] == "user_stop"
        assert reply.messages[0] == {"role": "user", "content": "Thanks."}
    assert reply.record["status"] == "completed" and isinstance(reply.record["reward"], float)


async def test_an_action_after_the_end_or_before_a_start_is_refused() -> None:
    async with seats("support-desk", Script([Say("Hello."), Say("###STOP###")])) as seat:
        taken, _ = await seat({"env_seed": {"task_id": "sd-01"}})
        await taken.say("Hi.")
        with pytest.raises(EpisodeOver, match="the episode is over"):
            await taken.say("Anything else?")


async def test_a_bad_task_ends_the_episode_at_once_with_its_record() -> None:
    async with seats("tictactoe", TicTacToePlayer()) as seat:
        _, progress = await seat({"env_seed": {"initial_moves": [{"position": 9, "mark": "X"}]}})
    assert progress.record is not None and progress.record["stop_reason"] == "invalid_task"
    assert "initial_moves" in progress.record["error"]["message"] and progress.tools == []


async def test_a_cancelled_seat_frees_its_episode_and_a_waiting_action_hears_of_it() -> None:
    thinking = asyncio.Event()

    async def slow_user(request: ModelRequest) -> Say:
        if request.call_index == 0:
            return Say("Hello.")
        thinking.set()
        await asyncio.Event().wait()
        return Say("never")

    async with seats("support-desk", slow_user) as seat:
        taken, _ = await seat({"env_seed": {"task_id": "sd-01"}})
        waiting = asyncio.create_task(taken.say("How can I help?"))
        await thinking.wait()
        taken.cancel()
        with pytest.raises(EpisodeOver, match="cancelled"):
            await waiting
        assert taken.episode_id not in taken.bridge.seats


async def test_a_policy_call_with_no_client_aborts_the_episode() -> None:
    bridge = PolicyBridge()
    with pytest.raises(Exception, match="no client holds the policy's seat"):
        await bridge.chat([], episode_id="nobody", sampling={}, tools=None, tool_choice="auto")
