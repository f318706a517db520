"""`sparring show`: records read back with precise errors, the transcript, and the HTML page's content.

The records come from real episodes against the scripted server over loopback HTTP.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from sparring.cli import main
from sparring.testing import Call, Fail, FakeModelProcess, Say, Script
from sparring.testing.responders import tictactoe_players
from sparring.testing.tokenizer import FakeTokenizer, decode
from sparring.views.html import rollout_page
from sparring.views.show import RecordError, load_record, token_decoder


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


async def play_records(make_harness: Any) -> list[dict[str, Any]]:
    """A win, an episode with a malformed tool call and a stop token, and one whose policy server fails."""
    async with make_harness(tictactoe_players()) as h:
        win = await h.play()
    broken_call = {
        "policy": Script([Call("make_move", '{"position": 4'), Say("your move")]),
        "user": Script([Call("make_move", {"position": 0}), Say("I took <b>0</b> ###STOP###")]),
    }
    async with make_harness(broken_call) as h:
        malformed = await h.play()
    async with make_harness({"policy": Fail(500), "user": Say("hi")}, max_retries=0) as h:
        aborted = await h.play()
    return [win, malformed, aborted]


@pytest.fixture
async def record_file(make_harness: Any, tmp_path: Path) -> AsyncIterator[Path]:
    yield write_jsonl(tmp_path / "rollouts.jsonl", await play_records(make_harness))


class Page(HTMLParser):
    """The page's message boxes (their data-actor), its token spans and its visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.actors: list[str] = []
        self.tokens: list[dict[str, str]] = []
        self.text: list[str] = []
        self._in_token = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        classes = attributes.get("class", "").split()
        if "message" in classes:
            self.actors.append(attributes.get("data-actor", ""))
        if "t" in classes:
            self.tokens.append({"class": attributes["class"], "title": attributes.get("title", ""), "text": ""})
            self._in_token = 1
        elif self._in_token and tag == "span":
            self._in_token += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in_token and tag == "span":
            self._in_token -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_token:
            self.tokens[-1]["text"] += data


def test_bad_files_and_indexes_are_named_precisely(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"nowhere.jsonl: no such file"):
        load_record(tmp_path / "nowhere.jsonl", 0)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(RecordError, match="no records"):
        load_record(empty, 0)
    record = {"id": "a", "status": "completed", "messages": [], "trajectory": {}}
    two = tmp_path / "two.jsonl"
    two.write_bytes(orjson.dumps(record) + b"\n\n" + b'{"id": "b", "status"\n')
    assert load_record(two, 0)["id"] == "a"
    with pytest.raises(RecordError, match=r"two.jsonl:3: not valid JSON"):
        load_record(two, 1)
    with pytest.raises(RecordError, match=r"--index 2 is out of range; the file has 2 records \(0-1\)"):
        load_record(two, 2)
    task_file = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "t1", "messages": []}])
    with pytest.raises(RecordError, match=r"tasks.jsonl:1: not a rollout record \(missing field status, trajectory\)"):
        load_record(task_file, 0)


def test_cli_errors_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "status": "aborted", "messages": [], "trajectory": {}}])
    assert main(["show", str(record), "--index", "5", "--html", str(tmp_path / "p.html")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["show", str(record), "--html", str(tmp_path / "p.html"), "--tokenizer", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "no such folder" in err
    assert main(["show", str(record), "--html", str(tmp_path / "p.html"), "--tokenizer", "http://127.0.0.1:9/v1"]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer http://127.0.0.1:9/v1: http://127.0.0.1:9/detokenize did not decode token 0" in err
    assert not (tmp_path / "p.html").exists()


async def test_transcript_shows_every_turn_and_the_outcome(record_file: Path, capsys) -> None:
    assert main(["show", str(record_file), "--index", "0"]) == 0
    out = capsys.readouterr().out
    assert "status completed (env_done)  reward 1.0" in out
    assert out.count("policy calls make_move(") == 4
    assert "I played 8. Your move." in out
    assert re.search(r"tokens: 1 segment\(s\), \d+ tokens, \d+ trained \(loss mask 1\), mean logprob", out)

    assert main(["show", str(record_file), "--index", "-1"]) == 0
    out = capsys.readouterr().out
    assert "status aborted (model_error)  reward None" in out
    assert re.search(r"error: \w+: ", out)

    assert main(["show", str(record_file), "--index", "1", "--view", "user"]) == 0
    out = capsys.readouterr().out
    assert 'user calls make_move({"position": 0})' in out
    assert "system (user's prompt)" in out


async def test_page_has_every_message_and_every_token(record_file: Path, tmp_path: Path) -> None:
    for index in range(3):
        record = load_record(record_file, index)
        page = Page(rollout_page(record, token_decoder(FakeTokenizer())))
        policy_actors = [m["actor"] for m in record["messages"]]
        assert page.actors[: len(policy_actors)] == policy_actors
        assert len(page.actors) == len(record["messages"]) + len(record["user_messages"])
        text = "".join(page.text)
        for message in record["messages"] + record["user_messages"]:
            for line in (message.get("content") or "").splitlines():
                assert line.strip() in text
        segments = record["trajectory"]["segments"]
        assert len(page.tokens) == sum(len(s["token_ids"]) for s in segments)
        trained = [t for t in page.tokens if "m1" in t["class"].split()]
        assert len(trained) == sum(sum(s["loss_mask"]) for s in segments)
        if segments:
            ids = segments[0]["token_ids"]
            shown = "".join(t["text"] for t in page.tokens[: len(ids)]).replace("↵", "").replace("∅", "")
            assert shown == decode(ids)
            first_trained = segments[0]["loss_mask"].index(1)
            logprob = segments[0]["logprobs"][first_trained]
            assert f"logprob {logprob:.4f}" in page.tokens[first_trained]["title"]
            assert page.tokens[0]["title"].endswith("prompt (loss mask 0, not trained)")


async def test_page_without_a_tokenizer_shows_ids_and_says_how_to_get_text(record_file: Path) -> None:
    record = load_record(record_file, 0)
    page = Page(rollout_page(record))
    ids = record["trajectory"]["segments"][0]["token_ids"]
    assert [t["text"] for t in page.tokens] == [str(i) for i in ids]
    assert "pass --tokenizer DIR" in "".join(page.text)


async def test_page_escapes_what_models_wrote(record_file: Path) -> None:
    record = load_record(record_file, 1)
    html = rollout_page(record)
    assert "I took &lt;b&gt;0&lt;/b&gt;" in html and "<b>0</b>" not in html
    assert "{&quot;position&quot;: 4" in html  # the malformed arguments, exactly as written


async def test_cli_writes_the_page_with_token_text_from_the_server(record_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "episode.html"
    with FakeModelProcess() as server:  # its own process: `show` asks its /detokenize synchronously
        assert main(["show", str(record_file), "--html", str(out), "--tokenizer", server.base_url]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    assert html == rollout_page(load_record(record_file, 0), token_decoder(FakeTokenizer()))
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not load anything from the network"


CRAFTED_ATTRIBUTION = {
    "label": "user",
    "reasons": [
        {
            "check": "spoke_as_assistant",
            "actor": "user",
            "severity": "fault",
            "detail": "the user spoke as the assistant: '<how can I help you>'",
            "where": {"view": "user_messages", "index": 2},
        },
        {
            "check": "judge",
            "actor": "agent",
            "severity": "note",
            "detail": "qwen: agent: it gave up",
            "where": {"view": "messages", "index": 1},
        },
    ],
    "judge": {"model": "qwen", "blame": "agent", "error": None},
}


async def test_the_transcript_says_who_made_the_episode_fail_and_why(record_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["show", str(record_file), "--index", "-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "attribution: env"
    assert lines[2].startswith("  - aborted (env, fault): aborted (model_error): ")

    record = {**load_record(record_file, 1), "attribution": CRAFTED_ATTRIBUTION}
    crafted = write_jsonl(tmp_path / "crafted.jsonl", [record, {k: v for k, v in record.items() if k != "attribution"}])
    assert main(["show", str(crafted)]) == 0
    assert capsys.readouterr().out.splitlines()[1:4] == [
        "attribution: user  (judge qwen: agent)",
        "  - spoke_as_assistant (user, fault) at user_messages[2]: the user spoke as the assistant: "
        "'<how can I help you>'",
        "  - judge (agent, note) at messages[1]: qwen: agent: it gave up",
    ]
    assert main(["show", str(crafted), "--index", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "attribution: none recorded (a record written before records had one)"
    )


async def test_the_page_shows_the_verdict_and_links_each_reason_to_its_message(record_file: Path) -> None:
    record = {**load_record(record_file, 1), "attribution": CRAFTED_ATTRIBUTION}
    html = rollout_page(record)
    assert '<span class="chip label-user">attribution user</span>' in html
    section = html[html.index('<section id="attribution"') :]
    section = section[: section.index("</section>")]
    assert "Label <b>user</b>" in section and "judge qwen: agent" in section
    assert '<a href="#user_messages-2">user_messages[2]</a>' in section
    assert '<a href="#messages-1">messages[1]</a>' in section
    assert "&lt;how can I help you&gt;" in section and "<how can" not in section
    for anchor in ('id="user_messages-2"', 'id="messages-1"'):
        assert html.count(anchor) == 1, "every reason points at exactly one message box"
    page = Page(rollout_page(load_record(record_file, 2)))
    assert "aborted (model_error)" in "".join(page.text)


async def test_the_page_marks_failed_tool_calls_with_whose_fault_they_were(record_file: Path) -> None:
    record = load_record(record_file, 1)
    (failed,) = [m for m in record["messages"] if m["role"] == "tool" and m["status"] == "error"]
    assert failed["fault"] == "caller", "a malformed call is the caller's"
    failed_calls = [m for m in record["messages"] + record["user_messages"] if m.get("status") == "error"]
    html = rollout_page(record)
    assert html.count("status-error") == 1 + len(failed_calls), "the CSS rule, and each failed call's box"
    assert html.count("result of make_move (error, the caller&#x27;s fault)") == len(failed_calls)
