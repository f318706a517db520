"""The scripted model server: template/tokenizer properties, and its HTTP behaviour over real loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
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
)
from sparring.testing.commands import register
from sparring.testing.fake_model import run_server
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
