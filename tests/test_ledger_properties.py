"""Properties of the ledger and of export over random call sequences (hypothesis).

A sequence is what the policy node meets in an episode: prompts that extend the current segment,
prompts a server re-rendered differently (a changed token, or a shorter history), completions of any
length with their logprobs, and an ending: a last answered call, a reply cut at `length`
(truncated), or a last call that failed (aborted: no entry). For every sequence the segments hold
three lists of one length, the mask sums to the tokens the server sampled, each call's prompt is
its segment's prefix, and `export` writes each segment of a scored record back unchanged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparring.core.ledger import LedgerEntry, check_invariants, ledger_entry, materialize, segment_ids
from sparring.core.record import build_record
from sparring.engine.export import export

TOKENS = st.integers(min_value=0, max_value=2**31 - 1)
LOGPROBS = st.floats(min_value=-50.0, max_value=0.0, allow_nan=False, allow_infinity=False)
CALL = st.fixed_dictionaries(
    {
        "prompt": st.sampled_from(["extends", "changed", "shorter"]),
        "at": st.integers(min_value=0),
        "tail": st.lists(TOKENS, max_size=6),
        "completion": st.lists(st.tuples(TOKENS, LOGPROBS), max_size=6),
        "finish": st.sampled_from(["stop", "tool_calls"]),
    }
)
EPISODE = st.fixed_dictionaries(
    {
        "calls": st.lists(CALL, min_size=0, max_size=8),
        "ending": st.sampled_from(["completed", "truncated", "aborted"]),
        "reward": st.floats(min_value=-1.0, max_value=1.0, allow_nan=False),
    }
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_FILES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def prompt_of(call: dict[str, Any], current: list[int]) -> list[int]:
    """The prompt the server rendered: the segment plus a tail, a changed history, or a shorter one."""
    if call["prompt"] == "changed" and current:
        changed = list(current)
        at = call["at"] % len(current)
        changed[at] = (changed[at] + 1) % 2**31
        return changed + call["tail"]
    if call["prompt"] == "shorter" and current:
        return current[: call["at"] % len(current)] + call["tail"]
    return current + call["tail"]


def play(episode: dict[str, Any]) -> tuple[list[LedgerEntry], list[list[int]], int, int, str]:
    """A sequence's ledger entries, each call's prompt, the tokens sampled, the prompts that did not
    extend their segment, and the episode's status."""
    entries: list[LedgerEntry] = []
    prompts: list[list[int]] = []
    sampled = broken = 0
    calls = list(episode["calls"])
    ending = episode["ending"]
    if ending == "aborted" and calls:
        calls.pop()  # the last call failed after its retries: the server sampled nothing, no entry
    for index, call in enumerate(calls):
        current = segment_ids(entries)
        prompt = prompt_of(call, current)
        broken += bool(entries) and prompt[: len(current)] != current
        ids = [token for token, _ in call["completion"]]
        finish = "length" if ending == "truncated" and index == len(calls) - 1 else call["finish"]
        entries.append(ledger_entry(entries, prompt, ids, [lp for _, lp in call["completion"]], finish))
        prompts.append(prompt)
        sampled += len(ids)
    return entries, prompts, sampled, broken, ending


@FAST
@given(EPISODE)
def test_segments_are_aligned_and_the_mask_counts_exactly_the_sampled_tokens(episode: dict[str, Any]) -> None:
    entries, prompts, sampled, broken, _ = play(episode)
    ledger = materialize(entries)
    assert check_invariants(ledger) == []
    for segment in ledger["segments"]:
        assert len(segment["token_ids"]) == len(segment["loss_mask"]) == len(segment["logprobs"])
    assert sum(sum(segment["loss_mask"]) for segment in ledger["segments"]) == sampled
    # Each call's exact prompt is its segment's prefix, and its completion (mask 1, its logprobs) follows.
    for call, prompt, entry in zip(ledger["calls"], prompts, entries, strict=True):
        segment = ledger["segments"][call["segment"]]
        end = call["prompt_len"] + call["completion_len"]
        assert segment["token_ids"][: call["prompt_len"]] == prompt
        assert segment["token_ids"][call["prompt_len"] : end] == entry["completion_ids"]
        assert segment["loss_mask"][call["prompt_len"] : end] == [1] * call["completion_len"]
        assert segment["logprobs"][call["prompt_len"] : end] == entry["completion_logprobs"]
    # A prompt that does not extend what its segment holds opens a new one; nothing is ever spliced.
    assert ledger["prefix_mismatches"] == broken == max(0, len(ledger["segments"]) - 1)


@WITH_FILES
@given(st.lists(EPISODE, min_size=1, max_size=4), st.sampled_from([".parquet", ".jsonl"]))
def test_an_exported_row_is_its_ledger_segment(episodes: list[dict[str, Any]], suffix: str) -> None:
    records = []
    for repeat, episode in enumerate(episodes):
        entries, _, _, _, status = play(episode)
        reason = {"completed": "env_done", "truncated": "max_output_tokens", "aborted": "model_error"}[status]
        reward = None if status == "aborted" else episode["reward"]
        state = {"ledger": entries, "status": status, "stop_reason": reason, "reward": reward}
        records.append(build_record(state, env="tictactoe", episode_id=f"e{repeat}", task_index=0, repeat_index=repeat))
    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "records.jsonl", Path(folder) / f"rows{suffix}"
        source.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
        stats = export(source, output)
        if suffix == ".parquet":
            rows = pq.read_table(output).to_pylist()
        else:
            rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    scored = [r for r in records if r["status"] != "aborted"]
    expected = [(r["id"], i, s) for r in scored for i, s in enumerate(r["trajectory"]["segments"])]
    assert stats.rows == len(rows) == len(expected)
    assert stats.aborted_left_out == len(records) - len(scored)
    for row, (episode_id, index, segment) in zip(rows, expected, strict=True):
        assert (row["episode_id"], row["segment_index"]) == (episode_id, index)
        assert row["token_ids"] == segment["token_ids"]
        assert row["loss_mask"] == segment["loss_mask"]
        assert row["logprobs"] == segment["logprobs"]
