"""Weight versions: which weights sampled each token, and how stale an episode is.

vLLM (0.32 and later, `--enable-scale-out`) labels every token it generates with the engine's weight
version, a string (`default` until `/update_weight_version` names another), and reports a choice's
labels as spans, `[{"version": "7", "start": 0, "end": 12}, ...]`, half-open over the choice's output
tokens. sparring keeps those spans per policy call, never inventing one: a call whose server reports
none (the chat and `/v1/completions` paths, or vLLM without scale-out) has `None`.

Order. Labels are strings. When every label compared parses as an integer (trainer steps: "0", "12"),
they compare as integers; otherwise by order of first appearance in the episode (its oldest label is
the one its first tokens carry).

Staleness of an episode: the current version (the one sparring was last told, `GenerationControl.version`)
minus the oldest version among its sampled tokens, in versions. It is 0 when the two labels are equal,
their difference when both parse as integers, and unknown (None) otherwise: sparring cannot tell how
far apart two arbitrary labels are, so trainers that want bounds number their versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from typing_extensions import TypedDict  # pydantic (Studio's schemas) needs it on Python < 3.12

STALE = "stale"
"""The stop reason of an episode ended because its oldest token passed `max_staleness` (status aborted)."""


class VersionSpan(TypedDict):
    """Tokens [start, end) of one reply (or, in an export row, of one segment) were sampled by `version`."""

    version: str
    start: int
    end: int


class EpisodeVersions(TypedDict):
    """A record's `weight_versions`: every version its policy tokens carry, the oldest, the newest,
    the version sparring was told when the episode ended, and the staleness between the two."""

    set: list[str]
    min: str
    max: str
    current: str | None
    staleness: int | None


def spans_from_server(raw: Any, tokens: int) -> list[VersionSpan] | None:
    """A choice's `weight_versions` as the server sent it, checked: spans in order, covering its `tokens`.

    None when the server sent none (it has no versions). A server that sends spans which do not tile
    the output exactly is not trusted: ValueError, saying what is wrong.
    """
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValueError(f"weight_versions must be a list of spans, got {type(raw).__name__}")
    spans: list[VersionSpan] = []
    position = 0
    for index, span in enumerate(raw):
        if not isinstance(span, dict):
            raise ValueError(f"weight_versions[{index}] must be an object, got {type(span).__name__}")
        version, start, end = span.get("version"), span.get("start"), span.get("end")
        if not isinstance(version, str) or type(start) is not int or type(end) is not int:
            raise ValueError(f"weight_versions[{index}] needs a string version and integer start and end: {span!r}")
        if start != position or end <= start:
            raise ValueError(f"weight_versions[{index}] is [{start}, {end}); the spans must tile the output in order")
        spans.append({"version": version, "start": start, "end": end})
        position = end
    if position != tokens:
        raise ValueError(f"weight_versions cover {position} tokens but the reply has {tokens}")
    return spans


def one_version(version: str, tokens: int) -> list[VersionSpan]:
    """Every one of `tokens` sampled by `version` (none for an empty reply)."""
    return [{"version": version, "start": 0, "end": tokens}] if tokens else []


def append_spans(spans: list[VersionSpan], more: Sequence[VersionSpan], offset: int) -> list[VersionSpan]:
    """`spans` followed by `more` shifted by `offset`; a run of one version across the seam stays one span."""
    joined = [dict(span) for span in spans]
    for span in more:
        start, end = span["start"] + offset, span["end"] + offset
        if joined and joined[-1]["version"] == span["version"] and joined[-1]["end"] == start:
            joined[-1]["end"] = end
        else:
            joined.append({"version": span["version"], "start": start, "end": end})
    return joined  # type: ignore[return-value]


def first_appearance(spans_per_call: Iterable[Sequence[VersionSpan] | None]) -> list[str] | None:
    """The distinct versions of an episode's calls, in the order they first appear; None if no call has any."""
    seen: dict[str, None] = {}
    known = False
    for spans in spans_per_call:
        if spans is None:
            continue
        known = True
        for span in spans:
            seen.setdefault(span["version"], None)
    return list(seen) if known else None


def as_integer(version: str) -> int | None:
    """The version as an integer when it is one ("12", "-1"), else None."""
    text = version.strip()
    digits = text[1:] if text[:1] in "+-" else text
    return int(text) if digits.isdigit() and digits.isascii() else None


def in_order(versions: Sequence[str]) -> list[str]:
    """Oldest first: by value when every label is an integer, else as given (first appearance)."""
    numbers = [as_integer(v) for v in versions]
    if versions and all(n is not None for n in numbers):
        return [v for _, v in sorted(zip(numbers, versions, strict=True), key=lambda pair: pair[0])]  # type: ignore[arg-type, return-value]
    return list(versions)


def staleness(oldest: str, current: str | None) -> int | None:
    """How many versions `current` is ahead of `oldest` (see the module docstring); None when unknown."""
    if current is None:
        return None
    if oldest == current:
        return 0
    old, new = as_integer(oldest), as_integer(current)
    return None if old is None or new is None else new - old


def episode_versions(
    spans_per_call: Iterable[Sequence[VersionSpan] | None], current: str | None
) -> EpisodeVersions | None:
    """A record's `weight_versions`, or None when no call reported versions."""
    seen = first_appearance(spans_per_call)
    if not seen:
        return None
    ordered = in_order(seen)
    return {
        "set": ordered,
        "min": ordered[0],
        "max": ordered[-1],
        "current": current,
        "staleness": staleness(ordered[0], current),
    }


def ledger_staleness(spans_per_call: Iterable[Sequence[VersionSpan] | None], current: str | None) -> int | None:
    """How many versions `current` is ahead of the oldest version among these calls' tokens; None when unknown."""
    seen = first_appearance(spans_per_call)
    return staleness(in_order(seen)[0], current) if seen else None


def record_staleness(record: Mapping[str, Any], current: str | None = None) -> int | None:
    """A record's staleness: as it was when the episode ended, or against `current` when given; None when unknown.

    A record written without versions (`weight_versions` null) has none. A malformed field is a ValueError.
    """
    versions = record.get("weight_versions")
    if versions is None:
        return None
    if not isinstance(versions, Mapping):
        raise ValueError(f"weight_versions: must be an object or null, got {type(versions).__name__}")
    if current is not None:
        oldest = versions.get("min")
        if not isinstance(oldest, str):
            raise ValueError(f"weight_versions.min: must be a string, got {oldest!r}")
        return staleness(oldest, current)
    value = versions.get("staleness")
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"weight_versions.staleness: must be a whole number, at least 0, or null, got {value!r}")
    return value


def is_stale(record: Mapping[str, Any], max_staleness: int | None, current: str | None = None) -> bool:
    """Whether the record's tokens are more than `max_staleness` versions old (ended so, or measured so)."""
    if max_staleness is None:
        return False
    if record.get("status") == "aborted" and record.get("stop_reason") == STALE:
        return True
    measured = record_staleness(record, current)
    return measured is not None and measured > max_staleness
