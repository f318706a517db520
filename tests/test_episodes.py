"""Full tic-tac-toe episodes through the graph, against the scripted server over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from sparring.envs.tictactoe import POLICY_PROMPT, USER_PERSONA
from sparring.testing import Call, Calls, ContextFull, Cut, Fail, FakeModelServer, Hang, Say, Script, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE


def moves(*positions: int) -> list[Call]:
    return [Call("make_move", {"position": p}) for p in positions]


def user_moves(*positions: int) -> Script:
    """The O player: each turn a move, then a short text (its forced tool_choice 'none' step)."""
    steps: list[Any] = []
    for p in positions:
        steps += [Call("make_move", {"position": p}), Say(f"I played {p}.")]
    return Script(steps)


def board(record: dict[str, Any]) -> list[Any]:
    return record["env_result"]["board"]


def tool_results(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in record["messages"] if m["role"] == "tool"]


async def test_x_wins_and_the_episode_ends_right_after_the_winning_move(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 1.0)
        assert record["env_result"]["game_result"] == "win"
        assert record["messages"][-1]["role"] == "tool" and '"winner":"X"' in record["messages"][-1]["content"]
        last_policy = max(i for i, r in enumerate(h.server.requests) if r["model"] == "policy")
        assert all(r["model"] == "policy" for r in h.server.requests[last_policy:]), "a user call after the win"
        assert record["num_user_calls"] == len(h.requests("user")) == 6
        assert record["num_policy_calls"] == len(h.requests("policy")) == 4
        assert record["trajectory"]["prefix_mismatches"] == 0 and len(record["trajectory"]["segments"]) == 1


async def test_draw(make_harness) -> None:
    async with make_harness({"policy": Script(moves(0, 8, 7, 2, 3)), "user": user_moves(4, 1, 6, 5)}) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 0.5)
        assert record["env_result"]["game_result"] == "draw" and all(board(record))


async def test_loss(make_harness) -> None:
    async with make_harness({"policy": Script(moves(0, 1, 8)), "user": user_moves(4, 2, 6)}) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "env_done", 0.0)
        assert record["env_result"]["game_result"] == "loss"
        assert record["num_policy_calls"] == 3, "the game ends on O's move, inside the user's turn"


async def test_max_turns_truncates(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play(max_turns=2)
        assert (record["status"], record["stop_reason"]) == ("truncated", "max_turns")
        assert record["num_turns"] == 2 and record["env_result"]["game_result"] == "incomplete"
        assert record["reward"] == 0.0


async def test_user_stop_token_completes_and_is_never_shown_to_the_policy(make_harness) -> None:
    policy = Script([Say("Hello, shall we play?"), Say("Anything else?")])
    user = Script([Say("No thanks, bye. ###STOP###")])
    async with make_harness({"policy": policy, "user": user}) as h:
        record = await h.play(user_tool_choice="auto", user_stop_tokens=["###STOP###", "###DONE###"])
        assert (record["status"], record["stop_reason"]) == ("completed", "user_stop")
        assert record["messages"][-1] == {"role": "user", "content": "No thanks, bye.", "actor": "user"}
        assert all("###STOP###" not in str(m.get("content")) for m in record["messages"])
        assert record["num_policy_calls"] == 1


async def test_stop_token_matches_exactly(make_harness) -> None:
    user = Script([Say("###stop### is not it"), Say("bye ###STOP###")])
    async with make_harness({"policy": Script([Say("hi"), Say("hi again")]), "user": user}) as h:
        record = await h.play(user_tool_choice="auto", max_user_steps_per_turn=1)
        assert record["stop_reason"] == "user_stop" and record["num_turns"] == 2


async def test_context_length_400_truncates(make_harness) -> None:
    async with make_harness({"policy": Script([*moves(4), ContextFull()]), "user": user_moves(0)}) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"]) == ("truncated", "context_length")
        assert "maximum context length" in record["error"]["message"]
        assert record["reward"] == 0.0 and record["env_result"]["game_result"] == "incomplete"
        assert record["num_policy_calls"] == len(record["trajectory"]["calls"]) == 1, "a refused call is not counted"


async def test_the_call_counts_of_an_aborted_episode_are_the_calls_the_server_answered(make_harness) -> None:
    """Issue 15, 14: an aborted record counted its failed last call (1,794 in the records, 1,791 answered)."""
    policy = Script([*moves(4), Fail(500), Fail(500)])
    async with make_harness({"policy": policy, "user": user_moves(0)}) as h:
        record = await h.play(max_retries=1)
        assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
        assert len(h.requests("policy")) == 3 and len(h.requests("user")) == 2
        assert record["num_policy_calls"] == len(record["trajectory"]["calls"]) == 1
        assert record["num_user_calls"] == 2
    user = Script([Call("make_move", {"position": 0}), Fail(503)])
    async with make_harness({"policy": Script(moves(4)), "user": user}) as h:
        record = await h.play(max_retries=0)
        assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
        assert len(h.requests("user")) == 2 and record["num_user_calls"] == 1


async def test_real_context_overflow_truncates(make_harness) -> None:
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with make_harness(players, max_model_len=1400, policy_max_tokens=100) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"]) == ("truncated", "context_length")
        assert "maximum context length is 1400 tokens" in record["error"]["message"]
        assert record["num_policy_calls"] >= 1 and record["env_result"]["game_result"] == "incomplete"


async def test_finish_reason_length_truncates(make_harness) -> None:
    async with make_harness({"policy": Script([Cut("I will play the cen")]), "user": user_moves(0)}) as h:
        record = await h.play()
        assert (record["status"], record["stop_reason"]) == ("truncated", "context_length")
        assert record["messages"][-1]["content"] == "I will play the cen"


async def test_max_output_tokens_truncates(make_harness) -> None:
    async with make_harness({"policy": Say("a very long answer " * 20), "user": user_moves(0)}) as h:
        record = await h.play(policy_max_tokens=8)
        assert (record["status"], record["stop_reason"]) == ("truncated", "max_output_tokens")
        assert record["usage"]["policy"]["completion_tokens"] == 8


async def test_a_500_that_recovers_within_retries(make_harness) -> None:
    policy = Script([Fail(500), Fail(502), *moves(4, 0, 2, 6)])
    async with make_harness({"policy": policy, "user": user_moves(8, 1, 3)}) as h:
        record = await h.play()
        assert (record["status"], record["reward"]) == ("completed", 1.0)
        assert record["num_policy_calls"] == 4 and len(h.requests("policy")) == 6


async def test_a_server_that_stays_down_aborts_with_the_error(make_harness) -> None:
    async with make_harness({"policy": Fail(503), "user": user_moves(0)}) as h:
        record = await h.play(max_retries=2)
        assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "model_error", None)
        assert record["error"]["type"] == "ModelUnavailable" and "HTTP 503" in record["error"]["message"]
        assert len(h.requests("policy")) == 3


async def test_a_server_that_hangs_times_out_and_aborts(make_harness) -> None:
    async with make_harness({"policy": Hang(3.0), "user": user_moves(0)}) as h:
        record = await h.play(request_timeout_s=0.3, max_retries=1)
        assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
        assert "no reply within 0.3 s" in record["error"]["message"]


async def test_an_unreachable_user_server_aborts(make_harness) -> None:
    async with make_harness({"policy": Script(moves(4))}) as h:
        record = await h.play(user_base_urls=["http://127.0.0.1:9/v1"], max_retries=0)
        assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
        assert record["num_policy_calls"] == 1 and record["num_user_calls"] == 0, "the failed call is not counted"


async def test_a_4xx_is_not_retried(make_harness) -> None:
    async with make_harness({"policy": Fail(422, {"error": {"message": "bad field"}}), "user": "hi"}) as h:
        record = await h.play(max_retries=3)
        assert record["status"] == "aborted" and "bad field" in record["error"]["message"]
        assert len(h.requests("policy")) == 1


async def test_malformed_arguments_and_illegal_moves_are_tool_errors_and_the_game_goes_on(make_harness) -> None:
    policy = Script(
        [
            Call("make_move", '{"position": 4'),  # malformed JSON
            Call("make_move", {"position": "4"}),  # wrong type
            Call("make_move", {"position": 9}),  # out of range
            Call("jump", {}),  # unknown tool
            Call("make_move", {"position": 4}),  # legal: X's turn is over
            Call("make_move", {"position": 8}),  # taken by O
            Call("make_move", {"position": 0}),
            *moves(2, 6),
        ]
    )
    async with make_harness({"policy": policy, "user": user_moves(8, 1, 3)}) as h:
        record = await h.play(max_steps_per_turn=6)
        errors = [m for m in tool_results(record) if '"error"' in m["content"] or m["content"].startswith("Error")]
        assert "not valid JSON" in errors[0]["content"]
        assert "must be integer" in errors[1]["content"]
        assert "at most 8" in errors[2]["content"]
        assert "unknown tool 'jump'" in errors[3]["content"]
        assert "already taken by O" in errors[4]["content"]
        assert len(errors) == 5
        assert (record["status"], record["reward"]) == ("completed", 1.0)


async def test_several_calls_in_one_message_run_in_order_and_the_actor_is_explicit(make_harness) -> None:
    policy = Script([Calls((Call("make_move", {"position": 4}), Call("make_move", {"position": 0}))), *moves(2)])
    user = Script([Calls((Call("make_move", {"position": 8}), Call("make_move", {"position": 7}))), Say("ok")])
    async with make_harness({"policy": policy, "user": user}) as h:
        record = await h.play(max_turns=1)
        results = tool_results(record)
        assert len(results) == 2
        assert "X played 4" in results[0]["content"]
        assert "it is not X's turn" in results[1]["content"], "the second X move must not become an O move"
        user_results = [m for m in record["user_messages"] if m["role"] == "tool"]
        assert "O played 8" in user_results[0]["content"] and "not O's turn" in user_results[1]["content"]
        assert board(record) == [None, None, None, None, "X", None, None, None, "O"]


async def test_game_over_moves_in_the_same_message_are_rejected(make_harness) -> None:
    policy = Script([*moves(4, 0), Calls((Call("make_move", {"position": 8}), Call("make_move", {"position": 2})))])
    async with make_harness({"policy": policy, "user": user_moves(1, 3)}) as h:
        record = await h.play()
        assert record["env_result"]["game_result"] == "win"
        assert "the game is over" in tool_results(record)[-1]["content"]


async def test_the_user_sees_a_role_flipped_history_without_the_policy_prompt(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play()
        for request in h.requests("user", record["id"]):
            messages = request["body"]["messages"]
            assert messages[0] == {"role": "system", "content": USER_PERSONA}
            assert all(POLICY_PROMPT not in str(m.get("content")) for m in messages)
            assert messages[1]["role"] == "assistant", "the task's opening user line is the user's own"
        last = h.requests("user", record["id"])[-1]["body"]["messages"]
        roles = [m["role"] for m in last]
        assert roles[:3] == ["system", "assistant", "user"]
        shown = [m["content"] for m in last if m["role"] == "user"]
        assert all("The board" in text for text in shown), "each user turn shows the board"
        own_texts = [m["content"] for m in last if m["role"] == "assistant" and m.get("content")]
        assert any(text.startswith("I played") for text in own_texts)
        policy_view = record["messages"]
        assert [m for m in policy_view if m["role"] == "user" and m["actor"] == "user"], "user text reaches the policy"
        assert not [m for m in policy_view if m["role"] == "assistant" and "O" in str(m.get("tool_calls"))]


async def test_user_tool_choice_is_sent_and_the_last_user_step_is_text(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play(max_user_steps_per_turn=2)
        choices = [r["body"].get("tool_choice") for r in h.requests("user", record["id"])]
        assert choices[:2] == ["required", "none"]


async def test_each_policy_prompt_extends_the_previous_one(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play()
        segment = record["trajectory"]["segments"][0]["token_ids"]
        calls = record["trajectory"]["calls"]
        offset = 0
        for call in calls:
            assert call["prompt_len"] >= offset
            offset = call["prompt_len"] + call["completion_len"]
        assert offset == len(segment)


async def test_a_history_rewriting_template_splits_the_ledger_and_counts_the_mismatch(make_harness) -> None:
    policy = Script([Say("Hello there.   Ready?"), Say("Good.")])
    user = Script([Say("Yes, ready."), Say("Bye.")])
    async with make_harness({"policy": policy, "user": user}, template="rewriting") as h:
        record = await h.play(user_tool_choice="auto", max_turns=2, max_user_steps_per_turn=1)
        assert record["num_policy_calls"] == 2
        assert len(record["trajectory"]["segments"]) == 2 and record["trajectory"]["prefix_mismatches"] == 1


async def test_token_in_token_out_keeps_one_segment_even_with_a_rewriting_template(make_harness) -> None:
    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with make_harness(players, template="rewriting") as h:
        record = await h.play(token_mode="tito")  # the server renders, with its rewriting template
        assert (record["status"], record["reward"]) == ("completed", 1.0)
        assert len(record["trajectory"]["segments"]) == 1 and record["trajectory"]["prefix_mismatches"] == 0
        assert {r["path"] for r in h.requests("policy")} == {"/inference/v1/generate"}
        prompts = [r["body"]["token_ids"] for r in h.requests("policy")]
        for earlier, later in itertools.pairwise(prompts):
            assert later[: len(earlier)] == earlier


async def test_tito_parses_bare_json_calls_and_reports_bad_ones(make_harness) -> None:
    bad = Say('{"name": "make_move", "arguments": {"position": 11}}')
    policy = Script([bad, *moves(4, 0, 2, 6)])
    async with make_harness({"policy": policy, "user": user_moves(8, 1, 3)}) as h:
        record = await h.play(token_mode="tito", max_steps_per_turn=2)
        first = tool_results(record)[0]["content"]
        assert "at most 8" in first
        assert record["reward"] == 1.0 and record["trajectory"]["prefix_mismatches"] == 0


async def test_replicas_are_sticky_per_episode_and_the_session_header_is_sent() -> None:
    from sparring import Engine, EpisodeSettings

    players = {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(players) as a, FakeModelServer(players) as b:
        config = EpisodeSettings(
            policy_base_urls=[a.base_url, b.base_url], user_base_urls=[a.base_url], user_tool_choice="required"
        )
        engine = Engine(config)
        records = await asyncio.gather(*(engine.play({}) for _ in range(12)))
        await engine.aclose()
    for record in records:
        assert record["reward"] == 1.0
        hits = [
            server
            for server in (a, b)
            for r in server.requests
            if r["model"] == "policy" and r["headers"]["X-Session-ID"] == record["id"]
        ]
        assert len(hits) == record["num_policy_calls"] and len(set(map(id, hits))) == 1
    assert any(r["model"] == "policy" for r in a.requests) and any(r["model"] == "policy" for r in b.requests)


async def test_a_bad_seed_aborts_with_a_precise_error(make_harness) -> None:
    async with make_harness({"policy": "hi", "user": "hi"}) as h:
        moves = [{"position": 4, "mark": "O"}, {"position": 4, "mark": "X"}]
        record = await h.play({"env_seed": {"initial_moves": moves}})
        assert (record["status"], record["stop_reason"]) == ("aborted", "invalid_task")
        assert "env_seed.initial_moves[1]: position 4 is already taken by O" in record["error"]["message"]
        assert h.server.requests == []


async def test_malformed_tool_calls_in_the_opening_end_invalid_task_naming_the_field(make_harness) -> None:
    """Issue 15, 11: this ended aborted/internal_error with KeyError: 'id' (and 200 from `serve`)."""
    opening = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"bogus": 1}]}]
    async with make_harness({"policy": Script(moves(4)), "user": user_moves(0)}) as h:
        record = await h.play({"messages": opening})
        assert (record["status"], record["stop_reason"]) == ("aborted", "invalid_task")
        assert "field messages.1.tool_calls.0.id: Field required" in record["error"]["message"]
        assert not h.server.requests


async def test_initial_moves_are_shown_to_the_policy(make_harness) -> None:
    task = {"env_seed": {"initial_moves": [{"position": 4, "mark": "X"}, {"position": 0, "mark": "O"}]}}
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        record = await h.play(task)
        assert "O | 1 | 2" in record["messages"][1]["content"]
        assert record["env_result"]["moves"][:2] == [{"position": 4, "mark": "X"}, {"position": 0, "mark": "O"}]
        assert record["status"] == "completed"


async def test_many_concurrent_episodes_share_one_client(make_harness) -> None:
    async with make_harness({"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}) as h:
        records = await asyncio.gather(*(h.play() for _ in range(64)))
        assert {r["reward"] for r in records} == {1.0}
        assert len({r["id"] for r in records}) == 64


async def test_chat_mode_accepts_calls_written_in_the_text(make_harness) -> None:
    fenced = '```json\n{"name": "make_move", "arguments": {"position": 4}}\n```'
    policy = Script([Say(fenced), *moves(0, 2, 6)])
    async with make_harness({"policy": policy, "user": user_moves(8, 1, 3)}) as h:
        record = await h.play(token_mode="chat")
        first = record["messages"][2]
        assert first["tool_calls"][0]["function"]["name"] == "make_move" and not first["content"]
        assert "X played 4" in tool_results(record)[0]["content"]
        assert record["reward"] == 1.0


async def test_a_server_that_dies_mid_request_aborts_without_hanging(make_harness) -> None:
    """The user's server accepts the request, then the process is gone: connection dropped, then refused."""

    async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.transport.abort()
        dying.close()

    dying = await asyncio.start_server(crash, "127.0.0.1", 0)
    port = dying.sockets[0].getsockname()[1]
    async with make_harness({"policy": Script(moves(4))}) as h:
        started = asyncio.get_running_loop().time()
        record = await h.play(user_base_urls=[f"http://127.0.0.1:{port}/v1"], max_retries=2, request_timeout_s=30.0)
        assert asyncio.get_running_loop().time() - started < 10, "a dead server must not cost a full time-out"
        assert (record["status"], record["stop_reason"]) == ("aborted", "model_error")
        assert record["num_policy_calls"] == 1 and record["error"]["type"] == "ModelUnavailable"
        assert "failed after 3 attempts" in record["error"]["message"]


async def test_an_illegal_move_gets_a_retry_and_a_legal_one_ends_the_turn(make_harness) -> None:
    policy = Script([*moves(9, 4), *moves(0, 2, 6)])
    user = Script([Call("make_move", {"position": 4}), Call("make_move", {"position": 8}), Say("I took 8.")])
    async with make_harness({"policy": policy, "user": user}) as h:
        record = await h.play(max_steps_per_turn=3, max_user_steps_per_turn=3, max_turns=1)
        policy_calls = [m for m in record["messages"] if m["role"] == "assistant"]
        assert len(policy_calls) == 2, "one retry after the illegal move, then the legal move ends the turn"
        user_choices = [r["body"]["tool_choice"] for r in h.requests("user", record["id"])]
        assert user_choices == ["required", "auto", "none"], "after its legal move the user is asked for words"
        assert board(record)[4] == "X" and board(record)[8] == "O"
