"""Tic-tac-toe games that finish: NeMo Gym's O-first rows, the user's free-cell tool, the environment's
move for a user that could not move, constrained tool calls in tito mode, and clean user text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sparring.core.task import parse_task
from sparring.envs.tictactoe import SeedError, TicTacToe
from sparring.testing import Call, Say, Script, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE
from sparring.tools.constraints import tool_call_constraint
from sparring.tools.specs import ToolSpec

ENV = TicTacToe()
SETTINGS = dict(TicTacToe.settings)


def players() -> dict[str, Any]:
    return {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}


def env_notes(record: dict[str, Any]) -> list[str]:
    """What the environment told the policy after the opening (observations, moves it played)."""
    return [m["content"] for m in record["messages"][2:] if m["role"] == "user" and m["actor"] == "env"]


# --- NeMo Gym's rows -------------------------------------------------------------------------------


async def test_seeded_moves_go_on_the_board_as_given_and_the_next_mark_is_the_other() -> None:
    state = await ENV.seed({"env_seed": {"initial_moves": [{"position": 4, "mark": "O"}]}})
    assert (state["board"][4], state["next_mark"]) == ("O", "X")
    state = await ENV.seed(
        {"env_seed": {"initial_moves": [{"position": 0, "mark": "O"}, {"position": 8, "mark": "O"}]}}
    )
    assert state["next_mark"] == "X" and state["board"][0] == state["board"][8] == "O"
    for moves, message in [
        ([{"position": 4, "mark": "O"}, {"position": 4, "mark": "X"}], "initial_moves[1]: position 4 is already taken"),
        ([{"position": 9, "mark": "O"}], "initial_moves[0]: position 9 is out of range 0-8"),
        ([{"position": 1, "mark": "Z"}], "initial_moves[0]: mark must be 'X' or 'O', got 'Z'"),
        ([{"position": p, "mark": "O"} for p in (0, 1, 2, 3)], "initial_moves[3]: the game is over"),
    ]:
        with pytest.raises(SeedError, match=message.replace("[", r"\[").replace("]", r"\]")):
            await ENV.seed({"env_seed": {"initial_moves": moves}})


async def test_a_nemo_gym_row_where_o_moved_first_plays_to_the_end(make_harness) -> None:
    row = {
        "responses_create_params": {"input": [{"role": "user", "content": "You are X. O has played the centre."}]},
        "verifier_metadata": {"initial_moves": [{"position": 4, "mark": "O"}]},
    }
    async with make_harness(players()) as h:
        record = await h.play(parse_task(row), **SETTINGS)
    assert record["status"] == "completed" and record["env_result"]["game_result"] in ("win", "draw", "loss")
    assert record["env_result"]["moves"][0] == {"position": 4, "mark": "O"}
    assert record["env_result"]["moves"][1]["mark"] == "X"
    assert not [m for m in record["messages"] if m["role"] == "tool" and '"error"' in m["content"]]


# --- the user's tool and the environment's move for it ---------------------------------------------


async def test_the_users_tool_offers_only_free_cells_and_the_policys_the_whole_board() -> None:
    state = await ENV.seed(
        {"env_seed": {"initial_moves": [{"position": 4, "mark": "X"}, {"position": 0, "mark": "O"}]}}
    )
    state = {**state, "board": [*state["board"][:8], "X"], "next_mark": "O"}
    (user_tool,) = ENV.episode_tools(state, "user")
    assert user_tool.parameters["properties"]["position"]["enum"] == [1, 2, 3, 5, 6, 7]
    assert user_tool.strict and user_tool.parameters["additionalProperties"] is False
    assert ENV.episode_tools(state, "policy") == ENV.tools("policy")


async def test_a_user_that_cannot_move_gets_a_move_played_for_it_and_the_policy_always_can_move(
    make_harness,
) -> None:
    user = Script([Say("Hmm, I am thinking."), Call("make_move", {"position": 0}), Say("I'm out of ideas.")])
    policy = Script(
        [Call("make_move", {"position": 8}), Call("make_move", {"position": 2}), Call("make_move", {"position": 5})]
    )
    async with make_harness({"policy": policy, "user": user}) as h:
        record = await h.play(**{**SETTINGS, "max_user_steps_per_turn": 1})
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    assert record["env_result"]["moves"] == [
        {"position": 8, "mark": "X"},
        {"position": 4, "mark": "O", "by": "env"},
        {"position": 2, "mark": "X"},
        {"position": 0, "mark": "O", "by": "env"},
        {"position": 5, "mark": "X"},
    ], "with one step a turn the user only talks, so the environment moves for it, centre first"
    notes = env_notes(record)
    assert notes[0].startswith("O made no legal move, so the environment played 4 for O.")
    assert '"next_mark":"X"' in notes[0]
    tool_results = [m["content"] for m in record["messages"] if m["role"] == "tool"]
    assert not [r for r in tool_results if "error" in r], "the policy was never handed a board where it cannot move"


async def test_a_move_played_for_the_user_can_end_the_game(make_harness) -> None:
    task = {
        "env_seed": {
            "initial_moves": [
                {"position": 0, "mark": "X"},
                {"position": 4, "mark": "O"},
                {"position": 1, "mark": "X"},
                {"position": 2, "mark": "O"},
            ]
        }
    }
    policy = Script([Call("make_move", {"position": 3})])
    async with make_harness({"policy": policy, "user": Script([Say("pass")])}) as h:
        record = await h.play(task, **{**SETTINGS, "max_user_steps_per_turn": 1})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 0.0)
    assert record["env_result"]["game_result"] == "loss" and record["env_result"]["moves"][-1]["by"] == "env"
    assert record["messages"][-1]["content"].startswith(
        "O made no legal move, so the environment played 6 for O. O wins."
    )
    assert record["num_policy_calls"] == 1


async def test_the_user_hands_over_right_after_its_move_without_words(make_harness) -> None:
    async with make_harness(players()) as h:
        record = await h.play(**SETTINGS)
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    assert record["num_user_calls"] == 3, "one call per O move, no words after it"
    assert [m for m in record["messages"] if m["actor"] == "user"] == []
    assert all(r["body"]["tool_choice"] == "required" for r in h.requests("user"))
    assert len(env_notes(record)) == 3 and all('"next_mark":"X"' in note for note in env_notes(record))


# --- constrained tool calls in tito mode -----------------------------------------------------------


def wire(*tools: ToolSpec) -> list[dict[str, Any]]:
    return [t.to_openai() for t in tools]


def structural_tag(constraint: dict[str, Any] | None) -> dict[str, Any]:
    assert constraint is not None
    return orjson.loads(constraint["structural_tag"])["format"]


def test_a_required_tool_call_is_one_tagged_call_that_fits_a_schema() -> None:
    other = ToolSpec("resign", "Give up.", {"type": "object", "properties": {}, "additionalProperties": False})
    tag = structural_tag(tool_call_constraint(wire(*ENV.tools("policy"), other), "required"))
    begin, call, end = tag["elements"]
    assert (tag["type"], begin["value"], end["value"]) == ("sequence", "<tool_call>\n", "\n</tool_call>")
    names = [option["properties"]["name"]["const"] for option in call["json_schema"]["anyOf"]]
    assert names == ["make_move", "resign"]
    assert call["json_schema"]["anyOf"][0]["properties"]["arguments"]["properties"]["position"]["maximum"] == 8
    named = {"type": "function", "function": {"name": "resign"}}
    (only,) = structural_tag(tool_call_constraint(wire(*ENV.tools("policy"), other), named))["elements"][1][
        "json_schema"
    ]["anyOf"]
    assert only["properties"]["name"]["const"] == "resign"


def test_auto_constrains_a_call_only_once_the_model_opens_one_and_none_or_loose_tools_not_at_all() -> None:
    tag = structural_tag(tool_call_constraint(wire(*ENV.tools("policy")), "auto"))
    assert tag["type"] == "triggered_tags" and tag["triggers"] == ["<tool_call>"]
    assert tool_call_constraint(wire(*ENV.tools("policy")), "none") is None
    assert tool_call_constraint(None, "required") is None
    loose = ToolSpec("note", "Write.", {"type": "object", "properties": {}}, strict=False)
    assert tool_call_constraint(wire(*ENV.tools("policy"), loose), "required") is None


async def test_tito_policy_calls_carry_the_constraint_and_the_episode_stays_exact(make_harness) -> None:
    async with make_harness(players()) as h:
        record = await h.play(token_mode="tito", **SETTINGS)
        bodies = [r["body"] for r in h.requests("policy")]
    assert (record["status"], record["reward"]) == ("completed", 1.0)
    assert record["trajectory"]["prefix_mismatches"] == 0
    assert bodies and all(r["path"] == "/inference/v1/generate" for r in h.requests("policy"))
    assert all(structural_tag(body["sampling_params"]["structured_outputs"])["type"] == "sequence" for body in bodies)


# --- clean user text -------------------------------------------------------------------------------


async def test_user_requests_stop_at_template_tokens(make_harness) -> None:
    policy = Script([Say("Hello there."), Say("Bye.")])
    async with make_harness({"policy": policy, "user": Script([Say("Hi"), Say("Done ###STOP###")])}) as h:
        await h.play(user_tool_choice="auto")
        assert all(r["body"]["stop"] == ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] for r in h.requests("user"))
        assert all("stop" not in r["body"] for r in h.requests("policy"))


async def test_user_text_is_cut_at_a_stop_string_a_server_let_through(make_harness) -> None:
    policy = Script([Say("Hello there."), Say("Bye.")])
    user = Script([Say("Let's play! Assistant: I am the assistant now"), Say("Done ###STOP###")])
    async with make_harness({"policy": policy, "user": user}) as h:
        record = await h.play(user_tool_choice="auto", user_stop_strings=["<|im_start|>", "Assistant:"])
    assert next(m["content"] for m in record["messages"] if m["actor"] == "user") == "Let's play!"
