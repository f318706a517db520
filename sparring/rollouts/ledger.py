"""The token ledger: the policy's exact token ids, loss mask and logprobs, built call by call.

Kept as plain lists and dicts so it lives in graph state (Studio, checkpoints) and in the rollout
record unchanged. Each call costs O(its new tokens) plus one C-level prefix comparison; nothing is
re-rendered or re-tokenised.
"""

from __future__ import annotations

from typing import TypedDict


class Segment(TypedDict):
    """One contiguous token sequence; all three lists have the same length."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]


class CallSpan(TypedDict):
    """Where one policy call's prompt and completion sit in the ledger."""

    segment: int
    prompt_len: int
    completion_len: int
    finish_reason: str


class Ledger(TypedDict):
    """All segments of one episode, the calls that built them, and how often the prefix broke."""

    segments: list[Segment]
    calls: list[CallSpan]
    prefix_mismatches: int


def new_ledger() -> Ledger:
    """An empty ledger."""
    return {"segments": [], "calls": [], "prefix_mismatches": 0}


def add_call(
    ledger: Ledger,
    prompt_ids: list[int],
    completion_ids: list[int],
    completion_logprobs: list[float],
    finish_reason: str,
) -> CallSpan:
    """Append one policy call; a prompt that does not extend the current segment opens a new one.

    The prompt's new tail (tool results, user text, generation prompt) is masked 0; the sampled
    completion is masked 1 with its logprobs. A history the server re-rendered differently is never
    spliced: the segment is closed and `prefix_mismatches` counts it.
    """
    if len(completion_ids) != len(completion_logprobs):
        raise ValueError(f"{len(completion_ids)} completion ids but {len(completion_logprobs)} logprobs")
    segments = ledger["segments"]
    current = segments[-1] if segments else None
    if current is not None and _extends(prompt_ids, current["token_ids"]):
        tail = prompt_ids[len(current["token_ids"]) :]
    else:
        if current is not None:
            ledger["prefix_mismatches"] += 1
        current = {"token_ids": [], "loss_mask": [], "logprobs": []}
        segments.append(current)
        tail = prompt_ids
    current["token_ids"] += tail
    current["loss_mask"] += [0] * len(tail)
    current["logprobs"] += [0.0] * len(tail)
    current["token_ids"] += completion_ids
    current["loss_mask"] += [1] * len(completion_ids)
    current["logprobs"] += completion_logprobs
    span: CallSpan = {
        "segment": len(segments) - 1,
        "prompt_len": len(prompt_ids),
        "completion_len": len(completion_ids),
        "finish_reason": finish_reason,
    }
    ledger["calls"].append(span)
    return span


def _extends(prompt_ids: list[int], segment_ids: list[int]) -> bool:
    """Whether the prompt starts with every token of the segment."""
    n = len(segment_ids)
    return len(prompt_ids) >= n and prompt_ids[:n] == segment_ids


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
