"""The token ledger: the policy's exact token ids, loss mask and logprobs, built call by call.

In graph state the ledger is an append-only list of immutable per-call entries (`LedgerEntry`),
merged by a reducer: each policy call returns only its own entry (the prompt's new tail, the
completion, its logprobs and where it sits), never a changed copy of what came before. So a
checkpoint taken at any step holds exactly the calls made up to that step, even when LangGraph
writes checkpoints after the next node has started. Segments (`Ledger`, the record's trajectory)
are materialised once, when the record is built.

Each call costs O(its new tokens) plus one C-level prefix comparison against the current segment;
nothing is re-rendered or re-tokenised, and nothing is spliced.

Each call also keeps the weight versions of its sampled tokens as the server reported them
(core/versions.py; None when it reported none) and how often it was aborted under it and went on
(`resumed`: a pause in abort mode; the entry still holds one call, its tokens whole).
"""

from __future__ import annotations

from collections.abc import Sequence

from typing_extensions import TypedDict  # pydantic (Studio's schemas) needs it on Python < 3.12

from sparring.core.versions import VersionSpan


class Segment(TypedDict):
    """One contiguous token sequence; all three lists have the same length."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]


class CallSpan(TypedDict):
    """Where one policy call's prompt and completion sit in the ledger (its completion starts at
    `prompt_len` in its segment), the versions of its completion's tokens, and its resumptions."""

    segment: int
    prompt_len: int
    completion_len: int
    finish_reason: str
    weight_versions: list[VersionSpan] | None
    resumed: int


class LedgerEntry(TypedDict):
    """One policy call as state holds it: only what it added, never changed after it is written.

    `prompt_tail` is the part of the prompt the segment did not hold yet (the whole prompt when the
    call opens a segment); the completion follows it. Concatenating the tails and completions of a
    segment's entries gives the segment's token ids.
    """

    segment: int
    prompt_len: int
    prompt_tail: list[int]
    completion_ids: list[int]
    completion_logprobs: list[float]
    finish_reason: str
    weight_versions: list[VersionSpan] | None
    resumed: int


class Ledger(TypedDict):
    """All segments of one episode, the calls that built them, and how often the prefix broke."""

    segments: list[Segment]
    calls: list[CallSpan]
    prefix_mismatches: int


def segment_ids(entries: Sequence[LedgerEntry]) -> list[int]:
    """The current (last) segment's token ids: a fresh list, built in C from the entries' pieces."""
    if not entries:
        return []
    last = entries[-1]["segment"]
    start = len(entries)
    while start > 0 and entries[start - 1]["segment"] == last:
        start -= 1
    ids: list[int] = []
    for entry in entries[start:]:
        ids += entry["prompt_tail"]
        ids += entry["completion_ids"]
    return ids


def ledger_entry(
    entries: Sequence[LedgerEntry],
    prompt_ids: list[int],
    completion_ids: list[int],
    completion_logprobs: list[float],
    finish_reason: str,
    current: list[int] | None = None,
    *,
    weight_versions: list[VersionSpan] | None = None,
    resumed: int = 0,
) -> LedgerEntry:
    """The entry one policy call adds; a prompt that does not extend the current segment opens a new one.

    The prompt's new tail (tool results, user text, generation prompt) will be masked 0; the sampled
    completion masked 1 with its logprobs. A history the server re-rendered differently is never
    spliced: the entry starts a new segment (counted as a prefix mismatch). `current` is the current
    segment's ids when the caller has built them already (`segment_ids(entries)`). `weight_versions`
    are the server's spans over the completion (None: it reported none); `resumed` counts the times
    the call was aborted and went on.
    """
    if len(completion_ids) != len(completion_logprobs):
        raise ValueError(f"{len(completion_ids)} completion ids but {len(completion_logprobs)} logprobs")
    if not entries:
        segment, tail = 0, prompt_ids[:]
    else:
        if current is None:
            current = segment_ids(entries)
        n = len(current)
        if len(prompt_ids) >= n and prompt_ids[:n] == current:
            segment, tail = entries[-1]["segment"], prompt_ids[n:]
        else:
            segment, tail = entries[-1]["segment"] + 1, prompt_ids[:]
    return {
        "segment": segment,
        "prompt_len": len(prompt_ids),
        "prompt_tail": tail,
        "completion_ids": list(completion_ids),
        "completion_logprobs": list(completion_logprobs),
        "finish_reason": finish_reason,
        "weight_versions": weight_versions,
        "resumed": resumed,
    }


def call_span(entry: LedgerEntry) -> CallSpan:
    """Where the entry's call sits: segment, prompt and completion lengths, finish reason, versions, resumptions."""
    return {
        "segment": entry["segment"],
        "prompt_len": entry["prompt_len"],
        "completion_len": len(entry["completion_ids"]),
        "finish_reason": entry["finish_reason"],
        "weight_versions": entry.get("weight_versions"),
        "resumed": entry.get("resumed", 0),
    }


def materialize(entries: Sequence[LedgerEntry]) -> Ledger:
    """Segments of equal-length `token_ids` / `loss_mask` / `logprobs`, the calls, and the prefix mismatches."""
    segments: list[Segment] = []
    for entry in entries:
        if entry["segment"] == len(segments):
            segments.append({"token_ids": [], "loss_mask": [], "logprobs": []})
        current = segments[-1]
        tail, completion = entry["prompt_tail"], entry["completion_ids"]
        current["token_ids"] += tail
        current["token_ids"] += completion
        current["loss_mask"] += [0] * len(tail)
        current["loss_mask"] += [1] * len(completion)
        current["logprobs"] += [0.0] * len(tail)
        current["logprobs"] += entry["completion_logprobs"]
    return {
        "segments": segments,
        "calls": [call_span(entry) for entry in entries],
        "prefix_mismatches": max(0, len(segments) - 1),
    }


def check_invariants(ledger: Ledger) -> list[str]:
    """Problems with a ledger (empty when sound): unequal lengths, masks outside {0, 1}."""
    problems = []
    for i, seg in enumerate(ledger["segments"]):
        lengths = {len(seg["token_ids"]), len(seg["loss_mask"]), len(seg["logprobs"])}
        if len(lengths) != 1:
            problems.append(f"segment {i}: lengths differ {sorted(lengths)}")
        if any(m not in (0, 1) for m in seg["loss_mask"]):
            problems.append(f"segment {i}: loss mask has values other than 0 and 1")
    return problems
