"""The scripted model server: template/tokenizer properties, and its HTTP behaviour over real loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sparring.testing import (
    Call,
    Calls,
    ContextFull,
    Cut,
    Echo,
    Fail,
    FakeModelProcess,
    FakeModelServer,
    FakeTokenizer,
    Hang,
    ModelRequest,
    Say,
    Script,
    TicTacToePlayer,
    TokenGate,
)
from sparring.testing.commands import register, run_server
from sparring.testing.responders import tictactoe_players
from sparring.testing.tokenizer import IM_END_ID, encode, parse_prompt, render_assistant_body

MAKE_MOVE = {
    "type": "function",
    "function": {
        "name": "make_move",
        "description": "Place your mark on a free cell (0-8).",
        "parameters": {
            "type": "object",
            "properties": {"position": {"type": "integer"}},
            "required": ["position"],
        },
    },
}
EMPTY = [None] * 9


def board_json(cells: dict[int, str]) -> str:
    return json.dumps({"board": [cells.get(i) for i in range(9)], "status": "in_progress"})


def assistant(content: str | None, calls: list[tuple[str, Any]] = ()) -> dict[str, Any]:
    """An assistant message as a client sends back what the server returned."""
    tool_calls = [
        {
            "id": f"c{k}",
            "type": "function",
            "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)},
        }
        for k, (n, a) in enumerate(calls)
    ]
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def generated(content: str, calls: list[tuple[str, Any]] = ()) -> list[int]:
    """The ids the server generates for a reply: the rendered body and <|im_end|>."""
    return [*encode(render_assistant_body(content, calls)), IM_END_ID]


# -- tokenizer and template -------------------------------------------------------------------------


def test_encode_decode_round_trip_with_special_tokens() -> None:
    tok = FakeTokenizer()
    text = "<|im_start|>user\nhé ✓<|im_end|>\n"
    ids = tok.encode(text)
    assert ids[0] == 1 and IM_END_ID in ids
    assert len(ids) == len(text.encode()) - len("<|im_start|><|im_end|>") + 2
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhé ✓\n"
    assert tok.eos_token_id == IM_END_ID
    assert tok.encode(text, add_special_tokens=False) == ids  # called like an HF tokenizer


CONVERSATION_STEPS: list[tuple[tuple[str, list[tuple[str, Any]]], list[dict[str, Any]]]] = [
    (("", [("make_move", {"position": 4})]), [{"role": "tool", "tool_call_id": "c0", "content": board_json({4: "X"})}]),
    (("I played 4. Your move.", []), [{"role": "user", "content": "I played 0. Your move."}]),
    (
        ("Two at once.", [("make_move", {"position": 2}), ("make_move", "{position: 6")]),
        [
            {"role": "tool", "tool_call_id": "c0", "content": board_json({4: "X", 0: "O", 2: "X"})},
            {"role": "tool", "tool_call_id": "c1", "content": "error: arguments are not valid JSON"},
        ],
    ),
    (("  Odd   spacing\n", []), [{"role": "user", "content": "Fine."}]),
]


def replay(template: str) -> list[bool]:
    """For each step: does the next prompt start with the previous prompt + the generated ids?"""
    tok = FakeTokenizer(template)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You play X."},
        {"role": "user", "content": "Board: " + board_json({})},
    ]
    prompt = tok.apply_chat_template(messages, tools=[MAKE_MOVE], add_generation_prompt=True)
    extends = []
    for (content, calls), new_messages in CONVERSATION_STEPS:
        completion = generated(content, calls)
        messages += [assistant(content or None, calls), *new_messages]
        following = tok.apply_chat_template(messages, tools=[MAKE_MOVE], add_generation_prompt=True)
        extends.append(following[: len(prompt) + len(completion)] == prompt + completion)
        prompt = following
    return extends


def test_rendering_again_with_the_reply_extends_the_previous_prompt() -> None:
    assert replay("chatml") == [True, True, True, True]


def test_rewriting_template_breaks_the_prefix_where_history_is_re_rendered() -> None:
    # Tool calls are compacted and whitespace collapsed; a plain single-spaced text survives.
    assert replay("rewriting") == [False, True, False, False]


def test_template_renders_chatml_with_tools_and_grouped_tool_responses() -> None:
    messages = [
        {"role": "user", "content": "Go."},
        assistant(None, [("make_move", {"position": 4}), ("make_move", {"position": 5})]),
        {"role": "tool", "tool_call_id": "c0", "content": "ok 4"},
        {"role": "tool", "tool_call_id": "c1", "content": "ok 5"},
    ]
    text = FakeTokenizer().apply_chat_template(messages, tools=[MAKE_MOVE], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "make_move"' in text
    assert text.endswith(
        "<|im_start|>user\nGo.<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "make_move", "arguments": {"position": 4}}\n</tool_call>\n'
        '<tool_call>\n{"name": "make_move", "arguments": {"position": 5}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nok 4\n</tool_response>\n<tool_response>\nok 5\n</tool_response>"
        "<|im_end|>\n"
    )


def test_parse_prompt_recovers_messages_and_tools() -> None:
    messages = [
        {"role": "system", "content": "You play X."},
        {"role": "user", "content": "Board: " + board_json({})},
        assistant("Here goes.", [("make_move", {"position": 4}), ("make_move", "{position: 5")]),
        {"role": "tool", "tool_call_id": "c0", "content": board_json({4: "X"})},
        {"role": "tool", "tool_call_id": "c1", "content": "error"},
    ]
    text = FakeTokenizer().apply_chat_template(messages, [MAKE_MOVE], add_generation_prompt=True, tokenize=False)
    parsed, tools = parse_prompt(text)
    assert tools == [MAKE_MOVE]
    assert [m["role"] for m in parsed] == ["system", "user", "assistant", "tool", "tool"]
    calls = parsed[2]["tool_calls"]
    assert parsed[2]["content"] == "Here goes."
    assert [c["function"]["arguments"] for c in calls] == ['{"position": 4}', "{position: 5"]
    assert [m["tool_call_id"] for m in parsed[3:]] == [c["id"] for c in calls]
    again = FakeTokenizer().apply_chat_template(parsed, tools, add_generation_prompt=True, tokenize=False)
    assert again == text


# -- responders -------------------------------------------------------------------------------------


def request(messages: list[dict[str, Any]], tool_choice: Any = "auto", call_index: int = 0) -> ModelRequest:
    return ModelRequest("policy", messages, [MAKE_MOVE], tool_choice, None, call_index)


def test_tictactoe_player_moves_then_reports_its_move() -> None:
    player = TicTacToePlayer([4, 0, 8, 1])
    opening = [{"role": "user", "content": "Board: " + board_json({4: "O"})}]
    assert player(request(opening)) == Call("make_move", {"position": 0})
    assert player(request(opening, tool_choice="none")) == Say("Your move.")
    moved = [*opening, assistant(None, [("make_move", {"position": 0})])]
    answered = [*moved, {"role": "tool", "tool_call_id": "c0", "content": board_json({4: "O", 0: "X"})}]
    assert player(request(answered)) == Say("I played 0. Your move.")
    rejected = [*moved, {"role": "tool", "tool_call_id": "c0", "content": '{"error": "cell 0 is taken"}'}]
    assert player(request(rejected)) == Call("make_move", {"position": 8})
    told = [*answered, assistant("I played 0. Your move."), {"role": "user", "content": "I played 8."}]
    assert player(request(told)) == Call("make_move", {"position": 1})
    assert TicTacToePlayer([4, 0])(request(told)) == Say("There is no free cell left.")


def play_preset() -> tuple[str, int]:
    """Referee the `tictactoe` preset: each side moves, hears the result, then talks to the other."""
    players = tictactoe_players()
    views: dict[str, list[dict[str, Any]]] = {"policy": [], "user": []}
    cells: dict[int, str] = {}
    marks = {"policy": "X", "user": "O"}
    lines = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
    calls = 0
    for turn in range(9):
        side = "policy" if turn % 2 == 0 else "user"
        other = "user" if side == "policy" else "policy"
        view = views[side]
        move = players[side](ModelRequest(side, view, [MAKE_MOVE], "auto", None, calls))
        calls += 1
        position = move.arguments["position"]
        cells[position] = marks[side]
        view += [assistant(None, [("make_move", move.arguments)])]
        view += [{"role": "tool", "tool_call_id": "c0", "content": board_json(cells)}]
        if any(all(cells.get(i) == marks[side] for i in line) for line in lines):
            return side, calls
        text = players[side](ModelRequest(side, view, [MAKE_MOVE], "auto", None, calls))
        calls += 1
        view.append({"role": "assistant", "content": text.text})
        views[other].append({"role": "user", "content": text.text})
    return "draw", calls


def test_tictactoe_preset_x_wins_in_thirteen_calls() -> None:
    assert play_preset() == ("policy", 13)


def test_script_steps_follow_the_call_index_then_say_the_end_text() -> None:
    script = Script(["hello", [Call("a"), Call("b")]], after=Say("bye"))
    assert script(request([], call_index=0)) == Say("hello")
    assert script(request([], call_index=1)) == Calls((Call("a"), Call("b")))
    assert script(request([], call_index=2)) == Say("bye")


# -- HTTP -------------------------------------------------------------------------------------------


async def post(url: str, body: dict[str, Any], session_id: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    headers = {"X-Session-ID": session_id} if session_id else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


async def chat(server: FakeModelServer, messages: list[dict[str, Any]], **extra: Any) -> tuple[int, Any]:
    body = {"model": "policy", "messages": messages, "tools": [MAKE_MOVE], **extra}
    session = body.pop("session_id", None)
    return await post(f"{server.base_url}/chat/completions", body, session)


OPENING = [{"role": "system", "content": "You play X."}, {"role": "user", "content": "Board: " + board_json({})}]


async def test_chat_completion_returns_a_parsed_tool_call_with_token_ids_and_logprobs() -> None:
    async with FakeModelServer({"policy": TicTacToePlayer()}) as server:
        status, body = await chat(server, OPENING, return_token_ids=True, logprobs=True, top_logprobs=2)
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [tool_call] = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function"
    assert tool_call["function"] == {"name": "make_move", "arguments": '{"position": 4}'}
    assert choice["token_ids"] == generated("", [("make_move", {"position": 4})])
    assert choice["token_ids"][-1] == IM_END_ID
    assert body["prompt_token_ids"] == FakeTokenizer().apply_chat_template(OPENING, [MAKE_MOVE], True)
    logprobs = choice["logprobs"]["content"]
    assert len(logprobs) == len(choice["token_ids"])
    assert all(entry["logprob"] < 0 and len(entry["top_logprobs"]) == 2 for entry in logprobs)
    assert body["usage"] == {
        "prompt_tokens": len(body["prompt_token_ids"]),
        "completion_tokens": len(choice["token_ids"]),
        "total_tokens": len(body["prompt_token_ids"]) + len(choice["token_ids"]),
    }
    assert server.requests[0]["model"] == "policy"


async def second_prompt_extends_first(template: str) -> bool:
    async with FakeModelServer({"policy": TicTacToePlayer()}, template=template) as server:
        _, first = await chat(server, OPENING, return_token_ids=True)
        message = first["choices"][0]["message"]
        [tool_call] = message["tool_calls"]
        result = {"role": "tool", "tool_call_id": tool_call["id"], "content": board_json({4: "X"})}
        _, second = await chat(server, [*OPENING, message, result], return_token_ids=True)
    assert second["choices"][0]["message"]["content"] == "I played 4. Your move."
    before = first["prompt_token_ids"] + first["choices"][0]["token_ids"]
    return second["prompt_token_ids"][: len(before)] == before


async def test_each_prompt_extends_the_previous_prompt_and_completion_over_http() -> None:
    assert await second_prompt_extends_first("chatml")
    assert not await second_prompt_extends_first("rewriting")


async def test_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    async with FakeModelServer({"policy": Script([Call("make_move", {"position": 4}), Cut("To be")])}) as server:
        _, cut = await chat(server, OPENING, max_tokens=5, return_token_ids=True, logprobs=True)
        _, scripted_cut = await chat(server, OPENING, max_completion_tokens=50, return_token_ids=True)
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"] == []
    assert choice["message"]["content"] == "<tool"
    assert len(choice["token_ids"]) == 5 == len(choice["logprobs"]["content"])
    scripted = scripted_cut["choices"][0]
    assert (scripted["finish_reason"], scripted["message"]["content"]) == ("length", "To be")
    assert IM_END_ID not in scripted["token_ids"]


async def test_context_overflow_is_vllms_400() -> None:
    prompt_tokens = len(FakeTokenizer().apply_chat_template(OPENING, [MAKE_MOVE], True))
    limit = prompt_tokens + 50
    async with FakeModelServer({"policy": Script([ContextFull(), "fits"])}, max_model_len=limit) as server:
        status, body = await chat(server, OPENING, max_tokens=300)
        scripted_status, scripted = await chat(server, OPENING, max_tokens=10)
        _, after = await chat(server, OPENING, max_tokens=10)
    assert status == 400
    assert body == {
        "error": {
            "message": f"This model's maximum context length is {limit} tokens. However, you requested 300 "
            f"output tokens and your prompt contains at least {prompt_tokens} input tokens, for a total "
            f"of at least {prompt_tokens + 300} tokens. Please reduce the length of the input prompt or "
            f"the number of requested output tokens. (parameter=input_tokens, value={prompt_tokens})",
            "type": "BadRequestError",
            "param": "input_tokens",
            "code": 400,
        }
    }
    assert scripted_status == 400 and "maximum context length" in scripted["error"]["message"]
    assert after["choices"][0]["message"]["content"] == "fits"  # the rejected length check used no step


async def post_text(url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, await response.text()


async def test_fail_answers_with_the_status_then_the_script_goes_on() -> None:
    script = Script([Fail(), Fail(503, "try later"), Say("recovered")])
    async with FakeModelServer({"policy": script}) as server:
        first = await chat(server, OPENING)
        second = await post_text(f"{server.base_url}/chat/completions", {"model": "policy", "messages": []})
        third = await chat(server, OPENING)
    assert first == (
        500,
        {"error": {"message": "Internal Server Error", "type": "InternalServerError", "param": None, "code": 500}},
    )
    assert second == (503, "try later")
    assert third[1]["choices"][0]["message"]["content"] == "recovered"


async def test_hang_makes_the_client_time_out_and_close_does_not_wait_for_it() -> None:
    async with FakeModelServer({"policy": Script([Hang(30), "on time"])}) as server:
        with pytest.raises(asyncio.TimeoutError):
            await post(f"{server.base_url}/chat/completions", {"model": "policy", "messages": OPENING}, timeout=0.2)
        _, retried = await chat(server, OPENING)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    assert retried["choices"][0]["message"]["content"] == "on time"


async def test_short_hang_answers_late() -> None:
    async with FakeModelServer({"policy": Hang(0.05, Say("finally"))}) as server:
        started = time.monotonic()
        _, body = await chat(server, OPENING)
    assert time.monotonic() - started >= 0.05
    assert body["choices"][0]["message"]["content"] == "finally"


async def test_cursors_are_per_session_and_per_model() -> None:
    script = Script(["one", "two", "three"])
    async with FakeModelServer({"policy": script, "user": script}) as server:
        a1 = await chat(server, OPENING, session_id="a")
        b1 = await chat(server, OPENING, session_id="b")
        a2 = await chat(server, OPENING, session_id="a")
        user_a1 = await chat(server, OPENING, session_id="a", model="user")
        none1 = await chat(server, OPENING)
        none2 = await chat(server, OPENING)
    texts = [r[1]["choices"][0]["message"]["content"] for r in (a1, b1, a2, user_a1, none1, none2)]
    assert texts == ["one", "one", "two", "one", "one", "two"]
    assert server.requests[0]["headers"]["x-session-id"] == "a"


async def test_tool_calls_stay_text_when_tool_choice_is_none_and_malformed_arguments_pass_through() -> None:
    async with FakeModelServer({"policy": Call("make_move", "{position: 4")}) as server:
        _, auto = await chat(server, OPENING)
        _, none = await chat(server, OPENING, tool_choice="none")
    [tool_call] = auto["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"]["arguments"] == "{position: 4"
    choice = none["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["tool_calls"] == []
    assert choice["message"]["content"] == '<tool_call>\n{"name": "make_move", "arguments": {position: 4}\n</tool_call>'


async def test_several_calls_with_text_in_one_reply() -> None:
    reply = Calls((Call("make_move", {"position": 1}), Call("make_move", {"position": 2})), text="Two.")
    async with FakeModelServer({"policy": reply}) as server:
        _, body = await chat(server, OPENING)
    message = body["choices"][0]["message"]
    assert message["content"] == "Two."
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"position": 1}', '{"position": 2}']


async def test_unknown_model_is_404_unless_there_is_a_fallback() -> None:
    async with FakeModelServer({"policy": "hi"}) as server:
        status, body = await chat(server, OPENING, model="gpt-9")
    assert status == 404 and body["error"]["type"] == "NotFoundError"
    async with FakeModelServer({"policy": "hi"}, fallback="policy") as server:
        status, body = await chat(server, OPENING, model="gpt-9")
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"


async def test_completions_token_in_round_trip() -> None:
    tok = FakeTokenizer()
    async with FakeModelServer({"policy": TicTacToePlayer()}) as server:
        url = f"{server.base_url}/completions"
        prompt = tok.apply_chat_template(OPENING, [MAKE_MOVE], add_generation_prompt=True)
        body = {"model": "policy", "prompt": prompt, "max_tokens": 200, "logprobs": 1, "return_token_ids": True}
        _, first = await post(url, body)
        choice = first["choices"][0]
        assert choice["prompt_token_ids"] == prompt
        assert choice["text"] == '<tool_call>\n{"name": "make_move", "arguments": {"position": 4}}\n</tool_call>'
        assert choice["token_ids"] == [*tok.encode(choice["text"]), IM_END_ID]
        assert choice["finish_reason"] == "stop"
        assert len(choice["logprobs"]["token_logprobs"]) == len(choice["token_ids"])
        tail = "\n<|im_start|>user\n<tool_response>\n" + board_json({4: "X"}) + "\n</tool_response><|im_end|>\n"
        following = prompt + choice["token_ids"] + tok.encode(tail + "<|im_start|>assistant\n")
        _, second = await post(url, {**body, "prompt": following})
        assert second["choices"][0]["text"] == "I played 4. Your move."
        _, short = await post(url, {"model": "policy", "prompt": prompt})  # vLLM's default max_tokens, 16
    assert short["choices"][0]["finish_reason"] == "length"
    assert server.requests[1]["path"] == "/v1/completions"


async def test_models_health_tokenize_detokenize() -> None:
    async with FakeModelServer({"policy": Echo(), "user": "ok"}, max_model_len=1234) as server:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/models") as response:
                models = await response.json()
            async with http.get(f"{server.url}/health") as response:
                assert response.status == 200
        _, tokenized = await post(f"{server.url}/tokenize", {"model": "policy", "messages": OPENING})
        _, detokenized = await post(f"{server.url}/detokenize", {"tokens": tokenized["tokens"]})
        _, echoed = await chat(server, [{"role": "user", "content": "same back"}])
    assert [m["id"] for m in models["data"]] == ["policy", "user"]
    assert models["data"][0]["max_model_len"] == 1234
    assert tokenized["tokens"] == FakeTokenizer().apply_chat_template(OPENING, add_generation_prompt=True)
    assert tokenized["count"] == len(tokenized["tokens"])
    assert detokenized["prompt"].endswith("<|im_start|>assistant\n")
    assert echoed["choices"][0]["message"]["content"] == "same back"


async def test_async_callables_are_responders() -> None:
    async def respond(call: ModelRequest) -> str:
        return f"call {call.call_index} of {call.session_id}"

    async with FakeModelServer({"policy": respond}) as server:
        _, body = await chat(server, OPENING, session_id="s1")
    assert body["choices"][0]["message"]["content"] == "call 0 of s1"


async def test_n_choices_take_the_next_steps_and_streaming_matches_the_plain_reply() -> None:
    steps = [Say("héllo"), Call("make_move", {"position": 4}), Say("héllo"), Call("make_move", {"position": 4})]
    async with FakeModelServer({"policy": Script(steps)}) as server:
        extra = {"return_token_ids": True, "logprobs": True, "n": 2}
        _, plain = await chat(server, OPENING, session_id="plain", **extra)
        body = {"model": "policy", "messages": OPENING, "tools": [MAKE_MOVE], "stream": True, **extra}
        body["stream_options"] = {"include_usage": True}
        async with aiohttp.ClientSession() as http, http.post(f"{server.base_url}/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = [line[6:] async for line in resp.content if line.startswith(b"data: ")]
        _, too_many = await chat(server, OPENING, n=99)
    assert too_many["error"]["message"] == "`n` must be an integer from 1 to 16, got 99."
    assert events[-1].strip() == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert chunks[0]["prompt_token_ids"] == plain["prompt_token_ids"]
    for index, expected in enumerate(plain["choices"]):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert [t for c in mine for t in c.get("token_ids", [])] == expected["token_ids"]
        assert [e for c in mine[1:] for e in c["logprobs"]["content"]] == expected["logprobs"]["content"]
        content = "".join(c["delta"].get("content") or "" for c in mine)
        assert content == (expected["message"]["content"] or "")
        streamed_calls = [call["function"] for c in mine for call in c["delta"].get("tool_calls", [])]
        assert streamed_calls == [call["function"] for call in expected["message"]["tool_calls"]]
        assert mine[-1]["finish_reason"] == expected["finish_reason"]
    assert [c["finish_reason"] for c in plain["choices"]] == ["stop", "tool_calls"]
    assert plain["choices"][0]["message"]["content"] == "héllo"


# -- running it -------------------------------------------------------------------------------------


def test_register_adds_the_fake_model_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="sparring")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fake-model", "--port", "8123", "--template", "rewriting", "--max-model-len", "99"])
    assert (args.port, args.preset, args.template, args.max_model_len) == (8123, "tictactoe", "rewriting", 99)
    assert args.func is run_server
    assert (args.scale_out, args.dev_mode, args.lora, args.weight_version) == (True, True, True, "default")
    switches = ["fake-model", "--no-scale-out", "--no-dev-mode", "--no-lora", "--token-latency", "0.5"]
    args = parser.parse_args([*switches, "--max-num-seqs", "4", "--weight-version", "v0"])
    assert (args.scale_out, args.dev_mode, args.lora) == (False, False, False)
    assert (args.token_latency, args.max_num_seqs, args.weight_version) == (0.5, 4, "v0")


async def test_subprocess_server_starts_and_answers() -> None:
    with FakeModelProcess("tictactoe") as server:
        assert server.pid is not None
        status, body = await post(
            f"{server.base_url}/chat/completions",
            {"model": "any-name", "messages": OPENING, "tools": [MAKE_MOVE], "return_token_ids": True},
        )
        process = server.process
    assert status == 200
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"position": 4}'
    assert process is not None and process.returncode == 0


async def test_subprocess_server_takes_the_version_and_the_off_switches() -> None:
    with FakeModelProcess("echo", weight_version="v0", dev_mode=False, lora=False, max_num_seqs=2) as server:
        prompt = FakeTokenizer().apply_chat_template([{"role": "user", "content": "same"}], add_generation_prompt=True)
        status, body = await post(f"{server.url}/inference/v1/generate", {"token_ids": prompt, "sampling_params": {}})
        paused = await send_json("POST", f"{server.url}/pause")
    assert status == 200 and body["choices"][0]["token_ids"] == generated("same")
    assert body["choices"][0]["weight_versions"] == [{"version": "v0", "start": 0, "end": len(generated("same"))}]
    assert paused == (404, {"detail": "Not Found"})


# -- vLLM's RL and token endpoints ----------------------------------------------------------------------

SAFETY_S = 60.0
"""Only a guard so a broken server fails the test instead of hanging it; nothing waits on the clock."""


async def until(server: FakeModelServer, predicate: Callable[[], bool]) -> None:
    await asyncio.wait_for(server.wait_until(predicate), SAFETY_S)


async def send(method: str, url: str, body: Any = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as response:
        return response.status, await response.text()


async def send_json(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, text = await send(method, url, body)
    return status, json.loads(text)


def gauges(text: str) -> dict[str, float]:
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}


async def render(server: FakeModelServer, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status, rendered = await post(f"{server.base_url}/chat/completions/render", {"messages": messages, **extra})
    assert status == 200, rendered
    return rendered


async def generate(server: FakeModelServer, token_ids: list[int], **extra: Any) -> tuple[int, Any]:
    body = {"token_ids": token_ids, "sampling_params": {"max_tokens": 300}, **extra}
    return await post(f"{server.url}/inference/v1/generate", body, timeout=SAFETY_S)


GENERATE_KEYS = [
    "request_id",
    "model",
    "created",
    "usage",
    "prompt_logprobs",
    "prompt_token_id_logprobs",
    "prompt_token_ids",
    "mm_placeholders",
    "metrics",
    "kv_transfer_params",
    "ec_transfer_params",
    "output_mode",
    "choices",
]
CHOICE_KEYS = [
    "index",
    "finish_reason",
    "stop_reason",
    "token_ids",
    "routed_experts",
    "sampling_mask",
    "weight_versions",
    "logprobs",
]


async def test_render_gives_the_chat_endpoints_own_prompt_ids_and_generate_answers_with_one_default_span() -> None:
    async with FakeModelServer({"policy": TicTacToePlayer()}) as server:
        rendered = await render(server, OPENING, model="policy", tools=[MAKE_MOVE], max_tokens=100)
        _, chat_reply = await chat(server, OPENING, return_token_ids=True)
        params = {**rendered["sampling_params"], "logprobs": 2}
        status, body = await generate(server, rendered["token_ids"], sampling_params=params, return_token_ids=True)
        _, info = await send_json("GET", f"{server.url}/weight_info")
    assert rendered["token_ids"] == chat_reply["prompt_token_ids"]
    assert rendered["token_ids"] == FakeTokenizer().apply_chat_template(OPENING, [MAKE_MOVE], True)
    assert rendered["request_id"].startswith("chatcmpl-") and rendered["model"] == "policy"
    assert rendered["sampling_params"] == {  # as a real vLLM 0.32 renders them
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_p": 1.0,
        "min_p": 0.0,
        "stop": [],
        "stop_token_ids": [],
        "max_tokens": 100,
        "output_kind": 2,
        "skip_clone": True,
        "bad_words": [],
        "skip_reading_prefix_cache": False,
    }
    assert status == 200 and list(body) == GENERATE_KEYS
    assert body["request_id"].startswith("generate-tokens-") and body["model"] == "policy"
    assert body["prompt_token_ids"] == rendered["token_ids"] and body["output_mode"] == "tokens"
    [choice] = body["choices"]
    assert list(choice) == CHOICE_KEYS
    assert (
        choice["token_ids"] == chat_reply["choices"][0]["token_ids"] == generated("", [("make_move", {"position": 4})])
    )
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert choice["weight_versions"] == [{"version": "default", "start": 0, "end": len(choice["token_ids"])}]
    assert info == {"weight_version": "default"}  # what vLLM reports before any version is set
    entries = choice["logprobs"]["content"]
    assert [e["token_id"] for e in entries] == choice["token_ids"]
    assert all(e["rank"] == 1 and [t["rank"] for t in e["top_logprobs"]] == [1, 2] for e in entries)
    assert all(e["top_logprobs"][0]["token_id"] == e["token_id"] for e in entries)
    prompt_tokens, generated_tokens = len(rendered["token_ids"]), len(choice["token_ids"])
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + generated_tokens,
        "completion_tokens": generated_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


async def test_generate_n_choices_text_mode_max_tokens_and_a_stream_with_spans_on_the_last_chunk() -> None:
    prompt = FakeTokenizer().apply_chat_template(OPENING, add_generation_prompt=True)
    async with FakeModelServer({"policy": Script(["héllo", "bye", "héllo"]), "user": "hi"}) as server:
        _, two = await generate(server, prompt, sampling_params={"n": 2, "max_tokens": 3}, output_mode="text")
        stream_body = {
            "token_ids": prompt,
            "sampling_params": {"logprobs": 0},
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.url}/inference/v1/generate", json=stream_body) as r,
        ):
            events = [line[6:].strip() async for line in r.content if line.startswith(b"data: ")]
    assert [c["text"] for c in two["choices"]] == ["hé", "bye"]  # 3 tokens: "h", and é's two bytes
    assert [c["finish_reason"] for c in two["choices"]] == ["length", "length"]
    assert two["choices"][0]["logprobs"] is None and two["output_mode"] == "text"
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    tokens = [c for c in chunks if c["choices"]]
    assert tokens[0]["prompt_token_ids"] == prompt and all("prompt_token_ids" not in c for c in tokens[1:])
    ids = [t for c in tokens for t in c["choices"][0]["token_ids"]]
    assert ids == generated("héllo")
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * (len(ids) - 1) + ["stop"]
    assert tokens[-1]["choices"][0]["weight_versions"] == [{"version": "default", "start": 0, "end": len(ids)}]
    assert all(c["choices"][0]["weight_versions"] is None for c in tokens[:-1])
    assert [e["token_id"] for c in tokens for e in c["choices"][0]["logprobs"]["content"]] == ids
    assert chunks[-1] == {
        "request_id": tokens[0]["request_id"],
        "usage": {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + len(ids), "completion_tokens": len(ids)},
        "output_mode": "tokens",
        "choices": [],
    }


async def test_render_completions_takes_text_or_ids_one_or_many() -> None:
    async with FakeModelServer({"policy": "hi"}) as server:
        url = f"{server.base_url}/completions/render"
        _, one = await post(url, {"prompt": "abc", "max_tokens": 5, "logprobs": 1}, session_id=None)
        _, many = await post(url, {"prompt": [[3, 4], [5]], "model": "policy"})
        missing_model = await post(url, {"prompt": "abc", "model": "gpt-9"})
    [single] = one
    assert single["token_ids"] == encode("abc") and single["request_id"].startswith("cmpl-")
    assert single["sampling_params"] == {
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "temperature": 1.0,
        "top_p": 1.0,
        "min_p": 0.0,
        "stop": [],
        "stop_token_ids": [],
        "max_tokens": 5,
        "logprobs": 1,
        "output_kind": 2,
        "skip_clone": True,
        "bad_words": [],
        "skip_reading_prefix_cache": False,
    }
    assert [r["token_ids"] for r in many] == [[3, 4], [5]]
    assert [r["request_id"][-2:] for r in many] == ["-0", "-1"]
    assert many[0]["sampling_params"]["max_tokens"] == 16  # the completions default, as vLLM's
    assert missing_model[0] == 404 and missing_model[1]["error"]["message"].startswith(
        "The model `gpt-9` does not exist."
    )


async def test_pause_keep_freezes_generation_and_a_version_update_splits_its_spans() -> None:
    gate = TokenGate()
    reply = "a reply long enough to pause"
    async with FakeModelServer({"policy": Say(reply)}, token_gate=gate) as server:
        prompt = (await render(server, OPENING))["token_ids"]
        task = asyncio.create_task(generate(server, prompt))
        gate.allow(3)
        await until(server, lambda: gate.passed == 3)
        assert await send_json("POST", f"{server.url}/pause?mode=keep") == (200, {"status": "paused"})
        gate.open()  # tokens may pass the gate now, but the pause holds them
        _, paused = await send_json("GET", f"{server.url}/is_paused")
        _, metrics = await send("GET", f"{server.url}/metrics")
        assert await send_json("POST", f"{server.url}/update_weight_version", {"new_version": "step-7"}) == (
            200,
            {"success": True, "new_version": "step-7"},
        )
        assert gate.passed == 3 and not task.done()
        assert await send_json("POST", f"{server.url}/resume") == (200, {"status": "resumed"})
        status, body = await task
        _, info = await send_json("GET", f"{server.url}/weight_info")
    assert paused == {"is_paused": True}
    assert gauges(metrics)["vllm:num_requests_running"] == 1.0  # frozen, not finished
    [choice] = body["choices"]
    assert status == 200 and choice["token_ids"] == generated(reply) and choice["finish_reason"] == "stop"
    end = len(choice["token_ids"])
    assert choice["weight_versions"] == [
        {"version": "default", "start": 0, "end": 3},
        {"version": "step-7", "start": 3, "end": end},
    ]
    assert info == {"weight_version": "step-7"}


async def test_pause_wait_answers_once_running_requests_finish_and_new_ones_wait_for_resume() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": Say("first reply"), "user": Say("second")}, token_gate=gate) as server:
        prompt = (await render(server, OPENING))["token_ids"]
        running = asyncio.create_task(generate(server, prompt))
        gate.allow(2)
        await until(server, lambda: gate.passed == 2)
        pausing = asyncio.create_task(send_json("POST", f"{server.url}/pause?mode=wait"))
        await until(server, lambda: server.engine.is_paused)
        arriving = asyncio.create_task(chat(server, OPENING, model="user", return_token_ids=True))
        await until(server, lambda: len(server.engine.queued) == 1)
        assert not pausing.done()  # still waiting for the running request
        gate.open()
        assert await pausing == (200, {"status": "paused"})
        status, first = await running
        _, metrics = await send("GET", f"{server.url}/metrics")
        await send_json("POST", f"{server.url}/update_weight_version", {"new_version": "v2"})
        assert not arriving.done()
        await send_json("POST", f"{server.url}/resume")
        _, second = await arriving
        await until(server, lambda: not server.engine.running)
    [choice] = first["choices"]
    assert status == 200 and choice["token_ids"] == generated("first reply")
    assert choice["weight_versions"] == [{"version": "default", "start": 0, "end": len(choice["token_ids"])}]
    assert gauges(metrics)["vllm:num_requests_waiting"] == 1.0
    assert gauges(metrics)["vllm:num_requests_running"] == 0.0
    assert second["choices"][0]["message"]["content"] == "second"
    assert server.engine.prefix_cache_resets == 1  # a wait pause clears the cache, as vLLM's does by default


async def test_pause_abort_ends_running_requests_at_once_and_the_partial_reply_can_be_continued() -> None:
    gate = TokenGate()
    reply = "the whole reply"
    async with FakeModelServer({"policy": Script([reply, reply])}, token_gate=gate) as server:
        prompt = (await render(server, OPENING))["token_ids"]
        running = asyncio.create_task(generate(server, prompt))
        chatting = asyncio.create_task(chat(server, OPENING, session_id="chat", return_token_ids=True))
        await until(server, lambda: len(server.engine.running) == 2)
        gate.allow(4)
        await until(server, lambda: gate.passed == 4)
        assert await send_json("POST", f"{server.url}/pause?mode=abort") == (200, {"status": "paused"})
        status, aborted = await running
        _, aborted_chat = await chatting
        arriving = asyncio.create_task(chat(server, OPENING, session_id="late"))
        await until(server, lambda: len(server.engine.queued) == 1)
        gate.open()
        await send_json("POST", f"{server.url}/resume")
        partial = aborted["choices"][0]["token_ids"]
        _, continued = await generate(server, prompt + partial)
        _, late = await arriving
    [choice] = aborted["choices"]
    assert status == 200 and choice["finish_reason"] == "abort" and choice["stop_reason"] is None
    assert len(partial) + len(aborted_chat["choices"][0]["token_ids"]) == 4  # the gate let out four tokens
    assert choice["weight_versions"] == ([{"version": "default", "start": 0, "end": len(partial)}] if partial else [])
    assert aborted_chat["choices"][0]["finish_reason"] == "abort"
    assert aborted_chat["choices"][0]["message"]["tool_calls"] == []
    rest = continued["choices"][0]["token_ids"]
    assert partial + rest == generated(reply)  # the next step of the script is the same reply
    assert continued["choices"][0]["weight_versions"] == [{"version": "default", "start": 0, "end": len(rest)}]
    assert late["choices"][0]["message"]["content"] == reply  # it waited for the resume, then ran


async def test_abort_requests_by_the_servers_ids_of_them() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": "slow"}, token_gate=gate) as server:
        prompt = encode("x")
        mine = asyncio.create_task(generate(server, prompt, request_id="mine"))
        other = asyncio.create_task(generate(server, prompt, request_id="other"))
        await until(server, lambda: len(server.engine.running) == 2)
        client_id = await send_json("POST", f"{server.url}/abort_requests", {"request_ids": ["mine"]})
        assert len(server.engine.running) == 2  # vLLM takes its own id, `generate-tokens-mine`, not the client's
        body = {"request_ids": ["generate-tokens-mine"]}
        status, text = await send("POST", f"{server.url}/inference/v1/abort_requests", body)
        _, mine_body = await mine
        gate.open()
        _, other_body = await other
        everything = await send_json("POST", f"{server.url}/abort_requests", {})
        bad = await send_json("POST", f"{server.url}/inference/v1/abort_requests", {})
    assert client_id == (200, {"status": "aborted", "aborted": 1})  # vLLM counts the ids it was sent
    assert (status, text) == (200, "")
    assert mine_body["request_id"] == "generate-tokens-mine"
    assert mine_body["choices"][0]["finish_reason"] == "abort" and mine_body["choices"][0]["token_ids"] == []
    assert mine_body["choices"][0]["weight_versions"] == []  # no token, no span, as vLLM
    assert other_body["choices"][0]["finish_reason"] == "stop"
    assert everything == (200, {"status": "aborted", "aborted": 0})
    assert bad[0] == 400 and bad[1]["error"]["message"] == "Missing 'request_ids' in request body"


async def test_reset_prefix_cache_fails_while_running_requests_hold_the_cache() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": "held"}, token_gate=gate) as server:
        task = asyncio.create_task(generate(server, encode("x")))
        await until(server, lambda: len(server.engine.running) == 1)
        held = await send_json("POST", f"{server.url}/reset_prefix_cache")
        forced = await send_json("POST", f"{server.url}/reset_prefix_cache?reset_running_requests=true")
        gate.open()
        await task
        free = await send_json("POST", f"{server.url}/reset_prefix_cache")
    assert [held, forced, free] == [(200, {"success": False}), (200, {"success": True}), (200, {"success": True})]
    assert server.engine.prefix_cache_resets == 2


async def test_lora_adapters_load_with_vllms_checks_serve_requests_and_unload(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter-7"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    script = Script(["base 1", "base 2", "base 3"])
    async with FakeModelServer({"policy": script, "user": "u"}, adapters={"special": "special reply"}) as server:
        load = f"{server.base_url}/load_lora_adapter"
        missing = await send_json("POST", load, {"lora_name": "v7", "lora_path": str(tmp_path / "nowhere")})
        empty = await send_json("POST", load, {"lora_name": "", "lora_path": str(adapter)})
        clash = await send_json("POST", load, {"lora_name": "user", "lora_path": str(adapter)})
        loaded = await send("POST", load, {"lora_name": "v7", "lora_path": str(adapter)})
        again = await send_json("POST", load, {"lora_name": "v7", "lora_path": str(adapter)})
        await send("POST", load, {"lora_name": "special", "lora_path": str(adapter)})
        _, models = await send_json("GET", f"{server.base_url}/models")
        base = await chat(server, OPENING, session_id="s")
        on_adapter = await chat(server, OPENING, session_id="s", model="v7")
        _, tokens = await generate(server, encode("x"), model="v7")
        special = await chat(server, OPENING, session_id="s", model="special")
        unloaded = await send("POST", f"{server.base_url}/unload_lora_adapter", {"lora_name": "v7"})
        unknown = await send_json("POST", f"{server.base_url}/unload_lora_adapter", {"lora_name": "v7"})
        gone = await chat(server, OPENING, model="v7")
    assert missing[0] == 404
    assert missing[1]["error"] == {
        "message": "Loading lora v7 failed: No adapter found for <path>",  # vLLM hides the path
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    assert empty[1]["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert clash[1]["error"]["message"] == "The lora adapter 'user' conflicts with a served base model."
    assert loaded == (200, "Success: LoRA adapter 'v7' added successfully.")
    assert again[0] == 400 and again[1]["error"]["type"] == "InvalidUserInput"
    cards = {card["id"]: card for card in models["data"]}
    assert (cards["v7"]["root"], cards["v7"]["parent"]) == (str(adapter), "policy")
    # the adapter answers for the base model and goes on with its script cursor
    texts = [r[1]["choices"][0]["message"]["content"] for r in (base, on_adapter, special)]
    assert texts == ["base 1", "base 2", "special reply"]
    assert on_adapter[1]["model"] == "v7" and tokens["model"] == "v7"
    assert [r["adapter"] for r in server.requests] == [None, "v7", "v7", "special", None]
    assert unloaded == (200, "Success: LoRA adapter 'v7' removed successfully.")
    assert unknown[0] == 404 and unknown[1]["error"]["message"] == "The lora adapter 'v7' cannot be found."
    assert gone[0] == 404
    assert server.adapter_log == [
        ("load", "v7", str(adapter)),
        ("load", "special", str(adapter)),
        ("unload", "v7", str(adapter)),
    ]


async def test_metrics_count_running_and_queued_requests_and_kv_cache_usage() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": "x"}, token_gate=gate, kv_cache_tokens=100) as server:
        _, idle = await send("GET", f"{server.url}/metrics")
        running = asyncio.create_task(generate(server, encode("a" * 10)))
        await until(server, lambda: len(server.engine.running) == 1)
        await send_json("POST", f"{server.url}/pause?mode=keep")
        queued = asyncio.create_task(generate(server, encode("b")))
        await until(server, lambda: len(server.engine.queued) == 1)
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
            content_type, busy = response.headers["Content-Type"], await response.text()
        gate.open()
        await send_json("POST", f"{server.url}/resume")
        await asyncio.gather(running, queued)
    assert gauges(idle) == {
        "vllm:num_requests_running": 0.0,
        "vllm:num_requests_waiting": 0.0,
        "vllm:kv_cache_usage_perc": 0.0,
    }
    assert gauges(busy) == {
        "vllm:num_requests_running": 1.0,
        "vllm:num_requests_waiting": 1.0,
        "vllm:kv_cache_usage_perc": 0.1,  # 10 prompt tokens of 100
    }
    assert 'vllm:num_requests_running{engine="0",model_name="policy"} 1.0' in busy
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


async def test_off_switches_answer_as_vllm_without_the_flags() -> None:
    features = {"scale_out": False, "dev_mode": False, "lora": False}
    async with FakeModelServer({"policy": "hi"}, **features) as server:
        generate_off = await generate(server, encode("x"))
        render_off = await post(f"{server.base_url}/chat/completions/render", {"messages": OPENING})
        pause_off = await send_json("POST", f"{server.url}/pause?mode=keep")
        info_off = await send_json("GET", f"{server.url}/weight_info")
        lora_off = await send_json("POST", f"{server.base_url}/load_lora_adapter", {"lora_name": "a", "lora_path": "/"})
        _, still = await chat(server, OPENING)
    disabled = {
        "error": {
            "message": "Scale-out endpoints are disabled. Restart vllm serve with --enable-scale-out to enable them.",
            "type": "PermissionDeniedError",
            "param": None,
            "code": 403,
        }
    }
    assert generate_off == (403, disabled) and render_off == (403, disabled)
    assert pause_off == info_off == lora_off == (404, {"detail": "Not Found"})
    assert still["choices"][0]["message"]["content"] == "hi"


async def test_bad_requests_to_the_new_endpoints_get_vllms_400s() -> None:
    async with FakeModelServer({"policy": "hello there"}, max_model_len=64) as server:
        generate_url = f"{server.url}/inference/v1/generate"
        no_params = await post(generate_url, {"token_ids": [5]})
        empty = await post(generate_url, {"token_ids": [], "sampling_params": {}})
        out_of_vocabulary = await post(generate_url, {"token_ids": [99999], "sampling_params": {}})
        too_long = await post(generate_url, {"token_ids": [5] * 65, "sampling_params": {}})
        bad_mode = await send_json("POST", f"{server.url}/pause?mode=sometimes")
        no_version = await send_json("POST", f"{server.url}/update_weight_version", {})
        wrong_method = await send_json("GET", f"{server.url}/pause")
        bad_logprobs = await post(generate_url, {"token_ids": [5], "sampling_params": {"logprobs": -2}})
        bad_messages = await post(f"{server.base_url}/chat/completions/render", {"messages": "hello"})
        _, fits = await generate(server, [5] * 60)
    assert no_params[0] == 400 and no_params[1]["error"]["param"] == "body.sampling_params"
    assert no_params[1]["error"]["type"] == "Bad Request"
    assert empty[1]["error"]["param"] == "body.token_ids"
    assert out_of_vocabulary[1]["error"]["message"] == "Token id 99999 is out of vocabulary"
    assert "longer than the maximum model length of 64" in too_long[1]["error"]["message"]
    assert bad_mode[0] == 400 and bad_mode[1]["error"]["param"] == "query.mode"
    assert no_version[0] == 400 and no_version[1]["error"]["param"] == "body.new_version"
    assert wrong_method == (405, {"detail": "Method Not Allowed"})
    assert bad_logprobs[1]["error"]["message"] == "logprobs must be non-negative or -1, got -2."
    assert bad_messages[0] == 400 and bad_messages[1]["error"]["param"] == "body.messages"
    assert fits["choices"][0]["finish_reason"] == "length" and len(fits["choices"][0]["token_ids"]) == 4


async def test_token_latency_paces_every_token_and_the_reply_is_unchanged() -> None:
    async with FakeModelServer({"policy": "paced"}, token_latency_s=0.001) as server:
        _, body = await generate(server, encode("x"))
    assert body["choices"][0]["token_ids"] == generated("paced")
    assert body["choices"][0]["weight_versions"] == [{"version": "default", "start": 0, "end": len(generated("paced"))}]


async def test_requests_beyond_max_num_seqs_wait_in_the_queue_for_a_free_slot() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": "one"}, token_gate=gate, max_num_seqs=1) as server:
        first = asyncio.create_task(generate(server, encode("a")))
        second = asyncio.create_task(generate(server, encode("b")))
        await until(server, lambda: len(server.engine.running) == 1 and len(server.engine.queued) == 1)
        _, metrics = await send("GET", f"{server.url}/metrics")
        gate.open()
        results = await asyncio.gather(first, second)
    assert gauges(metrics)["vllm:num_requests_running"] == 1.0
    assert gauges(metrics)["vllm:num_requests_waiting"] == 1.0
    assert [body["choices"][0]["token_ids"] for _, body in results] == [generated("one")] * 2


async def test_keep_pause_resets_the_prefix_cache_unless_told_not_to() -> None:
    async with FakeModelServer({"policy": "x"}) as server:
        await send_json("POST", f"{server.url}/pause?mode=keep")
        await send_json("POST", f"{server.url}/pause?mode=keep&clear_cache=false")
        bad_flag = await send_json("POST", f"{server.url}/pause?mode=keep&clear_cache=perhaps")
        await send_json("POST", f"{server.url}/resume")
        not_paused = await send_json("GET", f"{server.url}/is_paused")
        unknown = await generate(server, encode("x"), model="gpt-9")
    assert server.engine.prefix_cache_resets == 1
    assert bad_flag[0] == 400 and bad_flag[1]["error"]["param"] == "query.clear_cache"
    assert not_paused == (200, {"is_paused": False})
    assert unknown[1]["error"]["message"] == "The model `gpt-9` does not exist. Valid aliases: policy."


async def stream_events(url: str, body: dict[str, Any]) -> list[Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        lines = [line[6:].strip() async for line in response.content if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_aborted_streams_end_with_an_abort_chunk() -> None:
    gate = TokenGate()
    async with FakeModelServer({"policy": "a streamed reply"}, token_gate=gate) as server:
        body = {"token_ids": encode("x"), "sampling_params": {}, "stream": True}
        tokens = asyncio.create_task(stream_events(f"{server.url}/inference/v1/generate", body))
        gate.allow(2)
        await until(server, lambda: gate.passed == 2)
        await send_json("POST", f"{server.url}/pause?mode=abort")
        generate_chunks = await tokens
        await send_json("POST", f"{server.url}/resume")
        chat_body = {"model": "policy", "messages": OPENING, "stream": True, "return_token_ids": True}
        chatting = asyncio.create_task(stream_events(f"{server.base_url}/chat/completions", chat_body))
        await until(server, lambda: len(server.engine.running) == 1)
        await send_json("POST", f"{server.url}/pause?mode=abort")
        chat_chunks = await chatting
    choices = [chunk["choices"][0] for chunk in generate_chunks]
    assert [c["token_ids"] for c in choices] == [
        generated("a streamed reply")[:1],
        generated("a streamed reply")[1:2],
        [],
    ]
    assert [c["finish_reason"] for c in choices] == [None, None, "abort"]
    assert choices[-1]["weight_versions"] == [{"version": "default", "start": 0, "end": 2}]
    assert [c["choices"][0]["finish_reason"] for c in chat_chunks] == [None, "abort"]  # the role chunk, then the end
    assert chat_chunks[-1]["choices"][0]["token_ids"] == []
