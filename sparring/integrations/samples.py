"""From a rollout record to one trainer row: the one cut every bridge makes.

A trainer row is a prompt and a response over one token sequence. sparring's tito ledger holds one
segment per episode (`trajectory.segments[0]`), so the cut is: the prompt is the first policy call's
whole prompt (`segment.token_ids[:calls[0].prompt_len]`), the response is everything after it (the
policy's completions, with the tool results, user turns and observations between them), the mask is
the ledger's loss mask over the response (1 only on tokens the policy sampled), and the logprobs are
the ones the server returned for those tokens (0.0 elsewhere). The response ends with the policy's
last completion: the environment's and user's text after it never reaches the ledger.

A record with more than one segment (chat mode on a template that re-renders history) cannot be one
row without splicing, so it is refused; a record without policy tokens (an episode aborted before
the policy spoke) has no row: each bridge says what it sends in its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sparring.core.errors import InputError


@dataclass(frozen=True, slots=True)
class EpisodeSample:
    """One episode as a trainer row (see the module docstring for the cut)."""

    record_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    """1 on tokens the policy sampled, 0 on tokens it was shown (tool results, user turns, observations)."""
    response_logprobs: list[float]
    """The sampled tokens' logprobs as the server returned them; 0.0 where the mask is 0."""
    reward: float | None
    status: str
    """`completed`, `truncated` or `aborted` (the record's own status)."""
    stop_reason: str | None
    num_turns: int
    num_policy_calls: int
    call_versions: list[str | None]
    """Per policy call, in order, the weight version that sampled it (None where the server gave none)."""
    call_finish_reasons: list[str]

    @property
    def has_tokens(self) -> bool:
        """Whether the policy sampled anything (an episode aborted before its first call did not)."""
        return bool(self.response_ids)

    @property
    def versions(self) -> list[str]:
        """The distinct known versions of the episode's calls, in first-seen order."""
        return list(dict.fromkeys(v for v in self.call_versions if v is not None))

    @property
    def min_version(self) -> int | None:
        """The oldest version that sampled a token, as an integer (None when versions are unknown or not integers)."""
        steps = _integer_versions(self.call_versions)
        return min(steps) if steps else None

    @property
    def max_version(self) -> int | None:
        """The newest version that sampled a token, as an integer (None when unknown or not integers)."""
        steps = _integer_versions(self.call_versions)
        return max(steps) if steps else None

    @property
    def truncated(self) -> bool:
        """The episode ran out of turns, context or output tokens (its reward may still be real)."""
        return self.status == "truncated"

    def cut(self, max_response: int) -> EpisodeSample:
        """The first `max_response` response tokens (for trainers with a fixed response width); a cut sample is
        `truncated`."""
        if max_response < 1:
            raise ValueError(f"max_response must be at least 1, got {max_response}")
        if len(self.response_ids) <= max_response:
            return self
        return EpisodeSample(
            record_id=self.record_id,
            prompt_ids=self.prompt_ids,
            response_ids=self.response_ids[:max_response],
            response_mask=self.response_mask[:max_response],
            response_logprobs=self.response_logprobs[:max_response],
            reward=self.reward,
            status="truncated" if self.status == "completed" else self.status,
            stop_reason=self.stop_reason,
            num_turns=self.num_turns,
            num_policy_calls=self.num_policy_calls,
            call_versions=self.call_versions,
            call_finish_reasons=self.call_finish_reasons,
        )


def episode_sample(record: Mapping[str, Any]) -> EpisodeSample:
    """The trainer row of one rollout record; a record the cut cannot take raises `InputError` naming it."""
    record_id, segments, calls = _trajectory(record)
    if len(segments) > 1:
        raise InputError(
            f"record {record_id!r}: {len(segments)} token segments ({record['trajectory'].get('prefix_mismatches')} "
            "prefix mismatches: the chat template re-rendered the history), and a trainer row needs one sequence; "
            "collect with token mode tito"
        )
    return _sample(record, record_id, segments[0] if segments and calls else None, calls)


def segment_samples(record: Mapping[str, Any]) -> list[EpisodeSample]:
    """One row per token segment of a record, in ledger order (row k is segment k, cut with its own calls).

    For records one row cannot hold without splicing: a `sparring gateway` session (its branches, and the
    new segment a re-rendered history opens). Every row carries the record's reward, status and turns.
    """
    record_id, segments, calls = _trajectory(record)
    rows = []
    for index, segment in enumerate(segments):
        own = [call for call in calls if call.get("segment") == index]
        if not own:
            raise InputError(f"record {record_id!r}: segment {index} has no policy call; the trajectory is malformed")
        rows.append(_sample(record, record_id, segment, own))
    return rows


def _trajectory(record: Mapping[str, Any]) -> tuple[str, Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
    record_id = str(record.get("id") or "")
    trajectory = record.get("trajectory")
    if not isinstance(trajectory, Mapping):
        raise InputError(f"record {record_id!r}: no trajectory; is this a sparring rollout record?")
    return record_id, trajectory.get("segments") or (), trajectory.get("calls") or ()


def _sample(
    record: Mapping[str, Any],
    record_id: str,
    segment: Mapping[str, Any] | None,
    calls: Sequence[Mapping[str, Any]],
) -> EpisodeSample:
    """The cut of one segment whose first call is `calls[0]` (no segment: an episode without policy tokens)."""
    prompt: list[int] = []
    response: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    if segment is not None:
        ids, loss_mask, lps = segment["token_ids"], segment["loss_mask"], segment["logprobs"]
        if not len(ids) == len(loss_mask) == len(lps):
            raise InputError(
                f"record {record_id!r}: segment lengths differ (ids {len(ids)}, mask {len(loss_mask)}, "
                f"logprobs {len(lps)})"
            )
        start = int(calls[0]["prompt_len"])
        if not 0 < start <= len(ids) or any(loss_mask[:start]):
            raise InputError(f"record {record_id!r}: the first call's prompt ({start} tokens) does not fit its segment")
        prompt, response, mask, logprobs = ids[:start], ids[start:], loss_mask[start:], lps[start:]
    reward = record.get("reward")
    return EpisodeSample(
        record_id=record_id,
        prompt_ids=list(prompt),
        response_ids=list(response),
        response_mask=list(mask),
        response_logprobs=[float(x) for x in logprobs],
        reward=None if reward is None else float(reward),
        status=str(record.get("status")),
        stop_reason=record.get("stop_reason"),
        num_turns=int(record.get("num_turns") or 0),
        num_policy_calls=len(calls),
        call_versions=[call_version(call) for call in calls],
        call_finish_reasons=[str(call.get("finish_reason")) for call in calls],
    )


def call_version(call: Mapping[str, Any]) -> str | None:
    """The weight version that sampled a policy call (the last one, when an update landed inside it)."""
    spans = call.get("weight_versions")
    if not spans:
        return None
    version = spans[-1].get("version") if isinstance(spans[-1], Mapping) else spans[-1]
    return None if version is None else str(version)


def _integer_versions(versions: Sequence[str | None]) -> list[int]:
    return [int(v) for v in versions if v is not None and v.lstrip("-").isdigit()]
