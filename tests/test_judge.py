"""The optional LLM judge: asked over real HTTP (the scripted server plays it) only where the rules leave
`agent`, its verdict merged into the reasons with its model name, and a broken judge never ends an episode."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from sparring import Engine
from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.attribution import at, reason
from sparring.core.errors import UsageError
from sparring.core.judge import ANSWER_SCHEMA, MESSAGE_CHARS, judge_messages, read_answer, transcript
from sparring.engine.settings import default_settings, resolve_settings
from sparring.envs.support_desk.env import GREETING, STOP_TOKEN, resolve_task
from sparring.testing import Fail, FakeModelServer, Judge, Say, Script
from sparring.testing.responders import tictactoe_players

Play = Callable[..., Any]

WRONG_ORDER = "Hi, please cancel my order #W2002."
"""sd-01's customer wants #W1001 cancelled: asking for another order is a changed goal no rule can see."""


@pytest.fixture
async def desk() -> AsyncIterator[Play]:
    """`await desk(responders, env=..., task=..., **settings)` -> (record, the judge's requests)."""
    opened: list[tuple[FakeModelServer, Engine]] = []

    async def play(
        responders: Mapping[str, Any], *, env: str = "support-desk", task: dict[str, Any] | None = None, **settings: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        server = FakeModelServer(dict(responders))
        await server.__aenter__()
        endpoints = {"policy_base_urls": [server.base_url], "user_base_urls": [server.base_url]}
        endpoints["judge_base_urls"] = [server.base_url]
        config = replace(default_settings(env), **{**endpoints, "request_timeout_s": 5.0, **settings})
        engine = Engine(config, env=env)
        opened.append((server, engine))
        record = await engine.play(task if task is not None else {"env_seed": {"task_id": "sd-01"}})
        return record, [r for r in server.requests if r["model"] == "judge"]

    try:
        yield play
    finally:
        for server, engine in opened:
            await engine.aclose()
            await server.__aexit__(None, None, None)


def changed_goal() -> dict[str, Any]:
    return {
        "policy": Script([Say("Sorry, I could not find that order.")]),
        "user": Script([Say(WRONG_ORDER), Say(f"Okay, bye. {STOP_TOKEN}")]),
    }


async def test_the_judge_moves_an_agent_label_to_the_user(desk: Play) -> None:
    record, asked = await desk({**changed_goal(), "judge": Judge(user_faults=["#W2002"])})
    assert (record["status"], record["reward"]) == ("completed", 0.0)
    index = next(i for i, m in enumerate(record["messages"]) if m["content"] == WRONG_ORDER)
    assert record["attribution"] == {
        "label": "user",
        "reasons": [
            reason("judge", "user", f"judge: user: the user wrote {WRONG_ORDER!r}", at("messages", index)),
        ],
        "judge": {"model": "judge", "blame": "user", "error": None},
    }
    (request,) = asked
    body = request["body"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "attribution", "schema": ANSWER_SCHEMA, "strict": True},
    }
    assert (body["temperature"], body["max_tokens"]) == (0.0, 256)
    system, shown = (m["content"] for m in body["messages"])
    assert resolve_task({"env_seed": {"task_id": "sd-01"}}).instructions in system, "the environment's prompt"
    assert record["user_messages"][0]["content"][:200] in shown, "the user's persona"
    assert "Outcome: status completed (user_stop), reward 0.0" in shown
    assert f"[{index}] user: {WRONG_ORDER}" in shown
    assert request["headers"]["X-Session-ID"] == record["id"]


async def test_a_judge_that_finds_no_fault_of_the_user_leaves_agent_with_its_note(desk: Play) -> None:
    record, asked = await desk({**changed_goal(), "judge": Judge(otherwise="unclear")})
    assert len(asked) == 1
    assert record["attribution"]["label"] == "agent"
    (found,) = record["attribution"]["reasons"]
    assert (found["check"], found["actor"], found["severity"], found["where"]) == ("judge", "agent", "note", None)
    assert found["detail"].startswith("judge: unclear: ")
    assert record["attribution"]["judge"] == {"model": "judge", "blame": "unclear", "error": None}


@pytest.mark.parametrize(
    ("judge", "error"),
    [
        (Judge(reply="The user is to blame."), "the answer is not the JSON object asked for (no JSON object)"),
        (
            Judge(reply='{"blame": "customer", "message_index": 2, "evidence": "x"}'),
            "the answer is not the JSON object asked for (blame: Input should be 'user', 'agent', 'tool' or 'unclear')",
        ),
        (Fail(400), "ModelRequestError: "),
    ],
    ids=["prose", "bad-blame", "http-400"],
)
async def test_a_broken_judge_leaves_the_rules_verdict_and_never_ends_the_episode(
    desk: Play, judge: Any, error: str
) -> None:
    record, asked = await desk({**changed_goal(), "judge": judge})
    assert len(asked) == 1
    assert (record["status"], record["stop_reason"], record["error"]) == ("completed", "user_stop", None)
    attribution = record["attribution"]
    assert attribution["label"] == "agent"
    assert attribution["judge"]["blame"] is None and attribution["judge"]["error"].startswith(error)
    (found,) = attribution["reasons"]
    assert (found["check"], found["severity"]) == ("judge_error", "note")
    assert found["detail"].startswith("judge: no verdict: " + error)


async def test_an_unreachable_judge_is_retried_then_noted(desk: Play) -> None:
    record, asked = await desk({**changed_goal(), "judge": Fail(503)}, max_retries=1)
    assert len(asked) == 2, "one retry, as for any model call"
    assert record["status"] == "completed"
    assert record["attribution"]["judge"]["error"].startswith("ModelUnavailable: ")
    assert record["attribution"]["label"] == "agent"


async def test_the_judge_is_asked_only_where_the_rules_leave_agent(desk: Play) -> None:
    blaming = Judge(user_faults=["order", "cancel", "hi"], otherwise="user")
    silent_user = {"policy": Script([]), "user": Script([Say(STOP_TOKEN)]), "judge": blaming}
    record, asked = await desk(silent_user)
    assert (record["attribution"]["label"], record["attribution"]["judge"], asked) == ("user", None, [])

    record, asked = await desk({**tictactoe_players(), "judge": blaming}, env="tictactoe", task={})
    assert record["reward"] == 1.0
    assert (record["attribution"]["label"], record["attribution"]["judge"], asked) == ("none", None, [])

    broken_policy = {"policy": Fail(400), "user": Script([Say(WRONG_ORDER)]), "judge": blaming}
    record, asked = await desk(broken_policy)
    assert record["status"] == "aborted"
    assert (record["attribution"]["label"], record["attribution"]["judge"], asked) == ("env", None, [])


async def test_without_a_judge_the_rules_alone_decide(desk: Play) -> None:
    record, asked = await desk({**changed_goal(), "judge": Judge(user_faults=["#W2002"])}, judge_base_urls=None)
    assert asked == []
    assert record["attribution"] == {"label": "agent", "reasons": [], "judge": None}


# --- the judge's prompt and answer, without a server ------------------------------------------------------


def test_the_transcript_numbers_messages_as_the_record_does_and_says_whose_fault_a_tool_error_was() -> None:
    messages = [
        {"role": "system", "content": "Be helpful.", "actor": "env"},
        {"role": "assistant", "content": GREETING, "actor": "env"},
        {"role": "user", "content": "Cancel #W1001.", "actor": "user"},
        {
            "role": "assistant",
            "content": None,
            "actor": "policy",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_order", "arguments": "{}"}}],
        },
        {"role": "tool", "content": '{"error": "x"}', "name": "get_order", "status": "error", "fault": "caller"},
        {"role": "user", "content": '{"board": []}', "actor": "env"},
    ]
    assert transcript(messages).splitlines() == [
        "[0] system prompt: Be helpful.",
        f"[1] assistant: {GREETING}",
        "[2] user: Cancel #W1001.",
        "[3] assistant: calls get_order({})",
        '[4] tool result of get_order (error, fault caller): {"error": "x"}',
        '[5] environment: {"board": []}',
    ]


def test_a_long_transcript_keeps_its_ends_and_counts_what_it_left_out() -> None:
    long = "word " * 400
    messages = [{"role": "user", "content": f"{i} {long}", "actor": "user"} for i in range(60)]
    lines = transcript(messages).splitlines()
    assert lines[0].startswith("[0] user: 0 word") and lines[-1].startswith("[59] user: 59 word")
    assert lines[0].endswith(f"... ({len(f'0 {long}'.strip()) - MESSAGE_CHARS} more)")
    (gap,) = [line for line in lines if line.startswith("[...")]
    kept = len(lines) - 1
    assert gap == f"[... {60 - kept} messages left out ...]"
    assert 0 < kept < 60


def test_the_judges_chat_frames_the_environments_instructions() -> None:
    record = {
        "status": "truncated",
        "stop_reason": "max_turns",
        "reward": 0.0,
        "reward_components": {"orders": 0.0},
        "messages": [{"role": "user", "content": "Hello", "actor": "user"}],
        "user_messages": [{"role": "system", "content": "You are Mia."}],
    }
    system, user = judge_messages("THE ENV'S RULES", record)
    assert system["role"] == "system" and "THE ENV'S RULES" in system["content"]
    assert '"blame": "user" | "agent" | "tool" | "unclear"' in system["content"]
    assert user["content"] == (
        "The simulated user's instructions:\nYou are Mia.\n\n"
        "Outcome: status truncated (max_turns), reward 0.0, components orders 0.\n\n"
        "Transcript (the assistant's view; [n] numbers the messages):\n[0] user: Hello"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'Sure! {"blame": "tool", "message_index": 4, "evidence": "the tool crashed"} Hope that helps.',
            (reason("judge", "tool", "m: tool: the tool crashed", at("messages", 4)), "tool"),
        ),
        (
            '{"blame": "agent", "message_index": 99, "evidence": "it  gave\\nup"}',
            (reason("judge", "agent", "m: agent: it gave up", None, "note"), "agent"),
        ),
    ],
)
def test_answers_become_one_reason(text: str, expected: tuple[Any, str]) -> None:
    found, judged = read_answer(text, "m", messages=5)
    assert (found, judged) == (expected[0], {"model": "m", "blame": expected[1], "error": None})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"blame": "user", "message_index": 1}', "evidence: Field required"),
        ('{"blame": "user", "message_index": "1", "evidence": "x"}', "message_index: Input should be a valid integer"),
        ('{"blame": "user", "message_index": 1, "evidence": "x", "why": "y"}', "why: Extra inputs are not permitted"),
        ('{"blame": "user", "message_index": 1, "evidence": "x"', "no JSON object"),
        ("[1, 2]", "answer: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_answer_says_what_is_wrong(text: str, problem: str) -> None:
    found, judged = read_answer(text, "m", messages=5)
    assert judged["blame"] is None and problem in (judged["error"] or "")
    assert (found["check"], found["severity"], found["where"]) == ("judge_error", "note", None)


# --- settings -------------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_episode_options(parser)
    return parser.parse_args(["--policy-base-url", "http://p/v1", "--user-base-url", "http://u/v1", *argv])


def test_judge_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPARRING_JUDGE_BASE_URL", "SPARRING_JUDGE_MODEL", "SPARRING_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARRING_STATE_DIR", "/nonexistent-sparring-state")
    assert settings_from_args(parse(), "tictactoe").judge_base_urls is None, "no judge unless one is named"
    settings = settings_from_args(
        parse("--judge-base-url", "http://j1/v1,http://j2/v1", "--judge-model", "qwen", "--judge-max-tokens", "64"),
        "support-desk",
    )
    assert (settings.judge_base_urls, settings.judge_model, settings.judge_max_tokens) == (
        ["http://j1/v1", "http://j2/v1"],
        "qwen",
        64,
    )
    environ = {"SPARRING_JUDGE_BASE_URL": "http://j/v1", "SPARRING_JUDGE_MODEL": "big", "SPARRING_JUDGE_API_KEY": "k"}
    settings = resolve_settings("calendar", {"policy_base_urls": ["http://p/v1"]}, require=("policy",), environ=environ)
    assert (settings.judge_base_urls, settings.judge_model, settings.judge_api_key) == (["http://j/v1"], "big", "k")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--judge-base-url", "ftp://j"], "--judge-base-url: must be an http(s) URL, got 'ftp://j'"),
        (["--judge-max-tokens", "0"], "--judge-max-tokens: must be at least 1, got 0"),
    ],
)
def test_bad_judge_flags_name_the_flag(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARRING_STATE_DIR", "/nonexistent-sparring-state")
    with pytest.raises(UsageError) as caught:
        settings_from_args(parse(*argv), "tictactoe")
    assert str(caught.value) == message


def test_the_scripted_judge_answers_in_the_asked_form() -> None:
    request_text = "Transcript:\n[0] system prompt: x\n[3] user: I changed my mind about #W2002\n[4] assistant: ok"
    from sparring.testing import ModelRequest

    request = ModelRequest("judge", [{"role": "user", "content": request_text}], [], None, None, 0)
    said = Judge(user_faults=["#w2002"])(request)
    assert isinstance(said, Say)
    assert json.loads(said.text) == {
        "blame": "user",
        "message_index": 3,
        "evidence": "the user wrote 'I changed my mind about #W2002'",
    }
