"""Pure logic: ledger, argument validation, tool-call parsing, tic-tac-toe rules, task rows, routing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sparring.core.ledger import LedgerEntry, check_invariants, ledger_entry, materialize, segment_ids
from sparring.core.task import TaskError, parse_task, read_tasks, task_at
from sparring.envs.tictactoe import MAKE_MOVE, SeedError, TicTacToe
from sparring.models.client import _error_message
from sparring.models.replicas import ReplicaSet
from sparring.tools.parsing import parse_reply
from sparring.tools.validation import ToolArgumentError, parse_arguments

# -- ledger -----------------------------------------------------------------------------------------


def entries_of(*calls: tuple[list[int], list[int], list[float], str]) -> list[LedgerEntry]:
    """Entries as the policy node appends them: each one computed from the ones before, never changing them."""
    entries: list[LedgerEntry] = []
    for call in calls:
        entries = [*entries, ledger_entry(entries, *call)]
    return entries


def test_ledger_masks_prompt_tails_and_keeps_completion_logprobs() -> None:
    entries = entries_of(([1, 2, 3], [4, 5], [-0.1, -0.2], "tool_calls"), ([1, 2, 3, 4, 5, 6, 7], [8], [-0.3], "stop"))
    assert [e["prompt_tail"] for e in entries] == [[1, 2, 3], [6, 7]]
    ledger = materialize(entries)
    (segment,) = ledger["segments"]
    assert segment["token_ids"] == [1, 2, 3, 4, 5, 6, 7, 8] == segment_ids(entries)
    assert segment["loss_mask"] == [0, 0, 0, 1, 1, 0, 0, 1]
    assert segment["logprobs"] == [0.0, 0.0, 0.0, -0.1, -0.2, 0.0, 0.0, -0.3]
    assert ledger["prefix_mismatches"] == 0 and check_invariants(ledger) == []
    assert ledger["calls"] == [
        {
            "segment": 0,
            "prompt_len": 3,
            "completion_len": 2,
            "finish_reason": "tool_calls",
            "weight_versions": None,  # nobody said which weights sampled these
            "resumed": 0,
        },
        {
            "segment": 0,
            "prompt_len": 7,
            "completion_len": 1,
            "finish_reason": "stop",
            "weight_versions": None,
            "resumed": 0,
        },
    ]


def test_ledger_never_splices_a_rewritten_history() -> None:
    entries = entries_of(
        ([1, 2], [3, 4], [-1.0, -1.0], "stop"),
        ([1, 2, 9, 5], [6], [-1.0], "stop"),  # 3, 4 re-rendered as 9
        ([1, 2, 9, 5, 6, 7], [8], [-1.0], "stop"),
    )
    ledger = materialize(entries)
    assert ledger["prefix_mismatches"] == 1
    assert [s["token_ids"] for s in ledger["segments"]] == [[1, 2, 3, 4], [1, 2, 9, 5, 6, 7, 8]]
    assert [c["segment"] for c in ledger["calls"]] == [0, 1, 1]
    assert segment_ids(entries) == [1, 2, 9, 5, 6, 7, 8]


def test_a_prompt_shorter_than_the_segment_opens_a_new_one() -> None:
    entries = entries_of(([1, 2], [3], [-1.0], "stop"), ([1, 2], [4], [-1.0], "stop"))
    assert [e["segment"] for e in entries] == [0, 1] and materialize(entries)["prefix_mismatches"] == 1


def test_a_ledger_entry_never_changes_the_entries_or_lists_it_was_given() -> None:
    prompt, completion, logprobs = [1, 2, 3], [4], [-0.5]
    first = ledger_entry([], prompt, completion, logprobs, "stop")
    entries = [first]
    snapshot = copy.deepcopy(entries)
    second_prompt = [1, 2, 3, 4, 5]
    second = ledger_entry(entries, second_prompt, [6], [-0.1], "stop")
    assert entries == snapshot and second_prompt == [1, 2, 3, 4, 5]
    assert first["prompt_tail"] is not prompt and second["prompt_tail"] == [5]


def test_ledger_rejects_logprobs_that_do_not_match_the_ids() -> None:
    with pytest.raises(ValueError, match="2 completion ids but 1 logprobs"):
        ledger_entry([], [1], [2, 3], [-1.0], "stop")


# -- arguments and parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"position": 4', "not valid JSON"),
        ('{"position": "4"}', "arguments.position must be integer, got str '4'"),
        ('{"position": true}', "must be integer, got bool"),
        ('{"position": 4.5}', "must be integer, got float"),
        ("{}", "missing the required field 'position'"),
        ('{"position": 4, "mark": "X"}', "unknown field 'mark'"),
        ('{"position": -1}', "at least 0"),
        ("[4]", "arguments must be object"),
    ],
)
def test_bad_arguments_are_named_precisely(raw: str, message: str) -> None:
    with pytest.raises(ToolArgumentError, match="make_move: ") as info:
        parse_arguments(MAKE_MOVE, raw)
    assert message in str(info.value)


def test_good_arguments_parse() -> None:
    assert parse_arguments(MAKE_MOVE, '{"position": 8}') == {"position": 8}
    assert parse_arguments(MAKE_MOVE, {"position": 0}) == {"position": 0}


NAMES = frozenset({"make_move"})


def test_tagged_tool_calls_are_found_and_removed_from_the_text() -> None:
    text = 'I take the centre.\n<tool_call>\n{"name": "make_move", "arguments": {"position": 4}}\n</tool_call>'
    reply = parse_reply(text, NAMES, "c")
    assert reply.text == "I take the centre."
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("make_move", {"position": 4})]


def test_several_tagged_calls_keep_their_order() -> None:
    text = "".join(f'<tool_call>{{"name": "make_move", "arguments": {{"position": {p}}}}}</tool_call>' for p in (1, 2))
    reply = parse_reply(text, NAMES, "c")
    assert [json.loads(c.arguments)["position"] for c in reply.tool_calls] == [1, 2]
    assert [c.id for c in reply.tool_calls] == ["c_0", "c_1"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "make_move", "arguments": {"position": 4}}',
        'Sure!\n```json\n{"name": "make_move", "arguments": {"position": 4}}\n```',
        '{"name": "make_move", "parameters": {"position": 4}}',
    ],
)
def test_bare_json_calls_are_accepted(text: str) -> None:
    (call,) = parse_reply(text, NAMES, "c").tool_calls
    assert call.name == "make_move" and json.loads(call.arguments) == {"position": 4}


def test_json_that_names_no_tool_is_just_text() -> None:
    reply = parse_reply('{"name": "Bob", "age": 3}', NAMES, "c")
    assert reply.tool_calls == [] and reply.text == '{"name": "Bob", "age": 3}'


def test_a_malformed_tagged_call_is_kept_raw_for_a_precise_tool_error() -> None:
    (call,) = parse_reply(
        '<tool_call>{"name": "make_move", "arguments": {"position": 4}</tool_call>', NAMES, "c"
    ).tool_calls
    assert call.name == "make_move"
    with pytest.raises(ToolArgumentError, match="not valid JSON"):
        parse_arguments(MAKE_MOVE, call.arguments)


# -- tic-tac-toe ------------------------------------------------------------------------------------


async def test_moves_alternate_and_illegal_moves_leave_the_board_unchanged() -> None:
    env = TicTacToe()
    state = await env.seed({})
    result = await env.call_tool(state, "user", "make_move", {"position": 0})
    assert result.is_error and "not O's turn" in result.content and result.state is state
    result = await env.call_tool(state, "policy", "make_move", {"position": 4})
    assert not result.is_error and json.loads(result.content)["board"][4] == "X"
    assert state["board"][4] is None, "tool calls never mutate the state they were given"
    again = await env.call_tool(result.state, "user", "make_move", {"position": 4})
    assert again.is_error and "already taken by X" in json.loads(again.content)["error"]
    assert (await env.call_tool(result.state, "env", "make_move", {"position": 1})).is_error


async def test_win_draw_and_verify() -> None:
    env = TicTacToe()
    win = await env.seed(
        {
            "env_seed": {
                "initial_moves": [
                    {"position": p, "mark": m} for p, m in [(0, "X"), (3, "O"), (1, "X"), (4, "O"), (2, "X")]
                ]
            }
        }
    )
    assert env.is_done(win) and (await env.verify(win, [])).reward == 1.0
    draw_moves = [(0, "X"), (4, "O"), (8, "X"), (1, "O"), (7, "X"), (6, "O"), (2, "X"), (5, "O"), (3, "X")]
    draw = await env.seed({"env_seed": {"initial_moves": [{"position": p, "mark": m} for p, m in draw_moves]}})
    verdict = await env.verify(draw, [])
    assert (verdict.reward, verdict.result["game_result"]) == (0.5, "draw")
    fresh = await env.seed({})
    assert (await env.verify(fresh, [])).result["game_result"] == "incomplete"


@pytest.mark.parametrize(
    ("moves", "message"),
    [
        ([{"position": 9, "mark": "X"}], "initial_moves[0]: position 9 is out of range"),
        ([{"position": 1, "mark": "X"}, {"position": 1, "mark": "O"}], "initial_moves[1]: position 1 is already taken"),
        ([{"position": 1}], "initial_moves[0]: expected"),
        ([{"position": 1, "mark": "Z"}], "mark must be 'X' or 'O'"),
    ],
)
async def test_bad_seeds_are_named(moves: list, message: str) -> None:
    with pytest.raises(SeedError, match=r"env_seed\."):
        await TicTacToe().seed({"env_seed": {"initial_moves": moves}})
    with pytest.raises(SeedError) as info:
        await TicTacToe().seed({"env_seed": {"initial_moves": moves}})
    assert message in str(info.value)


# -- tasks ------------------------------------------------------------------------------------------


def test_task_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n{"limits": {"max_turns": 0}}\n')
    rows = read_tasks(path)
    assert next(rows)[:2] == (0, 1)
    with pytest.raises(TaskError, match=r"tasks.jsonl:3: field limits.max_turns: Input should be greater"):
        next(rows)
    path.write_text('{"mesages": []}\n')
    with pytest.raises(TaskError, match=r":1: field mesages: Extra inputs are not permitted"):
        task_at(path, 0)
    path.write_text("{not json}\n")
    with pytest.raises(TaskError, match=r":1: not valid JSON"):
        task_at(path, 0)
    with pytest.raises(TaskError, match="must be a JSON object"):
        parse_task([1, 2])


def test_nemo_gym_rows_are_accepted() -> None:
    row = {
        "responses_create_params": {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Go"}]}]},
        "verifier_metadata": {"initial_moves": [{"position": 4, "mark": "X"}]},
        "agent_ref": {"name": "tictactoe"},
    }
    task = parse_task(row)
    assert task["messages"] == [{"role": "user", "content": "Go"}]
    assert task["env_seed"]["initial_moves"][0]["position"] == 4
    assert task["metadata"]["agent_ref"] == {"name": "tictactoe"}


# -- client helpers ---------------------------------------------------------------------------------


def test_replica_choice_is_sticky_and_spread() -> None:
    urls = ("http://a/v1", "http://b/v1", "http://c/v1")
    replicas = ReplicaSet(urls)
    picks = [replicas.pick(f"ep-{i}") for i in range(600)]
    counts = {url: picks.count(url) for url in urls}
    assert all(150 < n < 250 for n in counts.values()), counts
    assert all(replicas.pick(f"ep-{i}") == picks[i] for i in range(600))
    assert {u: s["episodes"] for u, s in replicas.stats().items()} == counts
    grown = ReplicaSet((*urls, "http://d/v1"))
    moved = sum(grown.pick(f"ep-{i}") != picks[i] for i in range(600))
    assert moved < 240, "adding a replica moves only the episodes that land on it"


def test_failing_replica_is_taken_out_then_comes_back() -> None:
    now = [0.0]
    replicas = ReplicaSet(("http://a/v1", "http://b/v1"), failure_threshold=3, cooldown_s=10, clock=lambda: now[0])
    on_a = [f"ep-{i}" for i in range(50) if replicas.pick(f"ep-{i}") == "http://a/v1"]
    for _ in range(3):
        replicas.started("http://a/v1")
        replicas.finished("http://a/v1", ok=False)
    assert replicas.stats()["http://a/v1"]["available"] is False
    assert {replicas.pick(key) for key in on_a} == {"http://b/v1"}, "its episodes move to the other replica"
    assert replicas.pick("new-episode") == "http://b/v1"
    now[0] = 11.0
    assert replicas.stats()["http://a/v1"]["available"] is True
    for key in on_a:
        replicas.release(key)
    assert {replicas.pick(key) for key in on_a} == {"http://a/v1"}, "released episodes hash back once it is in"
    replicas.started("http://a/v1")
    replicas.finished("http://a/v1", ok=False)
    assert replicas.stats()["http://a/v1"]["available"] is False, "on probation: one failure takes it out again"
    replicas.started("http://b/v1")
    replicas.finished("http://b/v1", ok=None)
    assert replicas.stats()["http://b/v1"]["failures"] == 0, "a cancelled request says nothing about the replica"


def test_least_loaded_pins_new_sessions_to_the_idlest_replica() -> None:
    replicas = ReplicaSet(("http://a/v1", "http://b/v1"))
    first = replicas.pick_least_loaded("s1")
    replicas.started(first)
    second = replicas.pick_least_loaded("s2")
    assert {first, second} == {"http://a/v1", "http://b/v1"}
    assert replicas.pick_least_loaded("s1") == first, "a session stays where it started"


def test_error_bodies_of_either_shape_are_read() -> None:
    assert _error_message(b'{"error": {"message": "too long"}}') == "too long"
    assert _error_message(b'{"object": "error", "message": "old vllm"}') == "old vllm"
    assert _error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"


async def test_generation_control_holds_calls_while_closed_and_releases_them_on_open() -> None:
    import asyncio

    from sparring.models.generation import GenerationControl

    control = GenerationControl()
    await control.wait_open()  # open: returns at once
    control.close()
    waiters = [asyncio.create_task(control.wait_open()) for _ in range(3)]
    while control.waiting < 3:
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    waiters[0].cancel()
    await asyncio.gather(waiters[0], return_exceptions=True)
    control.open()
    await asyncio.gather(*waiters[1:])
    assert control.waiting == 0
