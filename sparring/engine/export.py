"""`export`: rollout records in, training rows out (Parquet, or JSONL by the output's extension).

One row per policy segment of each scored episode: the segment's `token_ids`, `loss_mask` and
`logprobs` exactly as the ledger holds them (never re-tokenised), the episode's reward, its group
and the group advantage. A *group* is the repeats of one task (`task_index`, per environment); a
record without a task index is a group of its own.

Advantages (GRPO-style): reward minus the group's mean reward; with `--normalize std`, divided by the
group's sample standard deviation (n - 1, as verl and TRL compute it) plus 1e-6. Aborted episodes
have no reward: they are left out, of the rows and of the group statistics, and counted. A group
whose rewards are all equal (one-record groups included) has advantage 0 everywhere and teaches
nothing: `--drop-equal-groups` leaves it out; it is counted either way. An episode without any
policy token (e.g. the user spoke and stopped) has no segment and so no row; it is counted too.

Every record is checked before anything is written (`record_problem`): the fields a row is made of
have their types (ids and statuses strings, indices whole numbers, a finite reward), and each
segment's `token_ids` (whole numbers from 0 to 2**31 - 1), `loss_mask` (0 or 1) and `logprobs`
(finite numbers: where the mask is 1 they are what was sampled, where it is 0 the ledger writes 0.0)
have equal lengths. A bad record is an `InputError` naming its
file, line and field; `on_bad_record="fail"` (the default) stops the export at the first one,
`"skip"` leaves it out, reports and counts it. A torn last line (a collect still writing, or killed
mid-line) is such a bad record: reported, never dropped silently. A failed export leaves no file at
the output path: rows go to a temporary file renamed into place only when every row is written.

`drop_attributed` (labels of the record's `attribution`, e.g. user, tool, env) leaves out the episodes
the policy did not make fail: they are no outcome of the policy's, so they leave the group statistics
too, and are counted per label. A record without an attribution cannot be told apart: an error.

Each row carries `weight_versions`: spans `{version, start, end}` over the segment's `token_ids`, one
per run of a version within each policy call's completion, so a trainer can mask or weight tokens by
the weights that sampled them. Prompt tokens have no version. A segment none of whose calls reported
versions has None; tokens no span covers have no known version.

`max_staleness` leaves out the episodes whose oldest policy token lags by more versions than that:
those ended aborted/stale at collection, and those whose staleness (the record's
`weight_versions.staleness`, measured when the episode ended, or against `current_version` when the
trainer names its version now) is above the bound. They are off-policy beyond what the trainer
accepts, so they leave the group statistics too, and are counted. A record whose staleness cannot be
known (no versions, or labels that are not whole numbers) is kept and counted apart; a malformed
`weight_versions` is a bad record like any other.

Two passes over the input, so memory holds rewards per group and one batch of rows, never the records.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparring.core.attribution import LABELS
from sparring.core.errors import InputError, UsageError
from sparring.core.versions import VersionSpan, append_spans, is_stale, record_staleness
from sparring.engine.output import check_output_path

if TYPE_CHECKING:
    import pyarrow as pa

EPSILON = 1e-6
ROWS_PER_BATCH = 1024
MAX_TOKEN_ID = 2**31 - 1
"""Token ids are stored as int32."""
BAD_RECORD_POLICIES = ("fail", "skip")
EXAMPLES_KEPT = 20


@dataclass
class ExportStats:
    """What went in and what came out."""

    records: int = 0
    rows: int = 0
    episodes_exported: int = 0
    aborted_left_out: int = 0
    unscored_left_out: int = 0
    without_policy_tokens: int = 0
    groups: int = 0
    equal_reward_groups: int = 0
    equal_reward_groups_dropped: int = 0
    groups_by_size: dict[int, int] = field(default_factory=dict)
    bad_records: int = 0
    bad_record_examples: list[str] = field(default_factory=list)
    """The first few bad records' errors (all of them went to `on_skip`)."""
    attributed_left_out: dict[str, int] = field(default_factory=dict)
    stale_left_out: int = 0
    """Episodes past `max_staleness` (ended stale at collection, or measured so)."""
    staleness_unknown_kept: int = 0
    """With `max_staleness`: episodes whose staleness cannot be known, kept."""


@dataclass(frozen=True, slots=True)
class Group:
    """A group's reward statistics."""

    size: int
    mean: float
    std: float

    @property
    def all_equal(self) -> bool:
        return self.size < 2 or self.std == 0.0


def group_id(record: dict[str, Any]) -> str:
    """Repeats of one task share a group; a record without a task index is alone."""
    if record.get("task_index") is None:
        return f"episode:{record['id']}"
    return f"{record.get('env')}:{record['task_index']}"


def is_scored(record: dict[str, Any]) -> bool:
    """Whether the record has a reward to learn from (aborted episodes never do)."""
    return record.get("status") != "aborted" and record.get("reward") is not None


def attribution_label(record: dict[str, Any], source: str | Path) -> str:
    """The record's attribution label; a record without a valid one is an InputError naming it."""
    attribution = record.get("attribution")
    label = attribution.get("label") if isinstance(attribution, dict) else None
    if label not in LABELS:
        raise InputError(
            f"{source}: record {record.get('id')!r}: field attribution.label: expected one of "
            f"{', '.join(LABELS)}, got {label!r} (records written before attribution have none: "
            "export them without --drop-attributed)"
        )
    return str(label)


def group_statistics(rewards: dict[str, list[float]]) -> dict[str, Group]:
    """Mean and sample std (0 for a single reward) per group."""
    return {
        gid: Group(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        for gid, values in rewards.items()
    }


def advantage(reward: float, group: Group, normalize: str) -> float:
    """Reward minus the group mean, divided by the group's std when normalising (0 for equal groups)."""
    if group.all_equal:
        return 0.0
    centred = reward - group.mean
    return centred / (group.std + EPSILON) if normalize == "std" else centred


def segment_versions(calls: list[dict[str, Any]], segment: int) -> list[VersionSpan] | None:
    """The version spans of one segment's completions, as offsets into its token ids (a call's completion
    starts at its `prompt_len`); None when none of its calls reported versions."""
    spans: list[VersionSpan] | None = None
    for call in calls:
        if call.get("segment") == segment and call.get("weight_versions") is not None:
            spans = append_spans(spans or [], call["weight_versions"], call["prompt_len"])
    return spans


def rows_of(record: dict[str, Any], group: Group, gid: str, normalize: str) -> Iterator[dict[str, Any]]:
    """One row per ledger segment of a scored record."""
    trajectory = record.get("trajectory") or {}
    segments = trajectory.get("segments") or []
    calls = trajectory.get("calls") or []
    value = advantage(float(record["reward"]), group, normalize)
    for index, segment in enumerate(segments):
        yield {
            "episode_id": record["id"],
            "env": record.get("env"),
            "task_index": record.get("task_index"),
            "repeat_index": record.get("repeat_index"),
            "task_id": None if record.get("task_id") is None else str(record["task_id"]),
            "group_id": gid,
            "group_size": group.size,
            "segment_index": index,
            "num_segments": len(segments),
            "token_ids": segment["token_ids"],
            "loss_mask": segment["loss_mask"],
            "logprobs": segment["logprobs"],
            "weight_versions": segment_versions(calls, index),
            "reward": float(record["reward"]),
            "advantage": value,
            "status": record.get("status"),
            "stop_reason": record.get("stop_reason"),
            "num_turns": record.get("num_turns"),
            "prefix_mismatches": trajectory.get("prefix_mismatches", 0),
        }


class _RecordFields(BaseModel):
    """The scalar fields a row is made of, with the types the rows store."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str
    env: str | None = None
    task_index: int | None = Field(None, ge=0)
    repeat_index: int | None = Field(None, ge=0)
    task_id: str | int | None = None
    status: Literal["completed", "truncated", "aborted"]
    stop_reason: str | None = None
    reward: float | None = Field(None, allow_inf_nan=False)
    num_turns: int | None = Field(None, ge=0, le=MAX_TOKEN_ID)


def record_problem(record: Any) -> str | None:
    """Why a record cannot become training rows (`field name: problem`), or None when it can."""
    if not isinstance(record, dict):
        return f"(record): must be a JSON object, got {type(record).__name__}"
    try:
        _RecordFields.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "(record)"
        return f"{name}: {first['msg']}, got {first.get('input')!r}"[:500]
    trajectory = record.get("trajectory")
    if trajectory is None:
        return None
    if not isinstance(trajectory, dict):
        return f"trajectory: must be an object, got {type(trajectory).__name__}"
    mismatches = trajectory.get("prefix_mismatches", 0)
    if type(mismatches) is not int or not 0 <= mismatches <= MAX_TOKEN_ID:
        return f"trajectory.prefix_mismatches: must be a whole number, at least 0, got {mismatches!r}"
    segments = trajectory.get("segments") or []
    if not isinstance(segments, list):
        return f"trajectory.segments: must be a list, got {type(segments).__name__}"
    for index, segment in enumerate(segments):
        problem = segment_problem(segment)
        if problem is not None:
            return f"trajectory.segments.{index}{problem}"
    return None


def segment_problem(segment: Any) -> str | None:
    """Why a ledger segment is not a training row (`.field: problem`), or None.

    Checked in C where it can be (types as a set, min and max), element by element only to name the bad one.
    """
    if not isinstance(segment, dict):
        return f": must be an object, got {type(segment).__name__}"
    arrays = {}
    for name in ("token_ids", "loss_mask", "logprobs"):
        values = segment.get(name)
        if not isinstance(values, list):
            return f".{name}: must be a list, got {type(values).__name__}"
        arrays[name] = values
    ids, mask, logprobs = arrays["token_ids"], arrays["loss_mask"], arrays["logprobs"]
    if not set(map(type, ids)) <= {int} or (ids and (min(ids) < 0 or max(ids) > MAX_TOKEN_ID)):
        j = next(j for j, v in enumerate(ids) if type(v) is not int or not 0 <= v <= MAX_TOKEN_ID)
        return f".token_ids.{j}: must be a token id (a whole number from 0 to {MAX_TOKEN_ID}), got {ids[j]!r}"
    if not set(map(type, mask)) <= {int} or not set(mask) <= {0, 1}:
        j = next(j for j, v in enumerate(mask) if type(v) is not int or v not in (0, 1))
        return f".loss_mask.{j}: must be 0 or 1, got {mask[j]!r}"
    if not set(map(type, logprobs)) <= {float, int}:
        j = next(j for j, v in enumerate(logprobs) if type(v) not in (float, int))
        return f".logprobs.{j}: must be a number, got {logprobs[j]!r}"
    if not len(ids) == len(mask) == len(logprobs):
        return (
            ": token_ids, loss_mask and logprobs must have one entry per token, "
            f"got lengths {len(ids)}, {len(mask)} and {len(logprobs)}"
        )
    if not all(map(math.isfinite, logprobs)):
        j = next(j for j, v in enumerate(logprobs) if not math.isfinite(v))
        return f".logprobs.{j}: must be a finite number, got {logprobs[j]!r}"
    return None


def _lines(handle: IO[bytes], end: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, offset after it) from the start of the file, up to byte `end` if given."""
    handle.seek(0)
    offset = 0
    for line_no, line in enumerate(handle, start=1):
        if end is not None and offset >= end:
            return
        offset += len(line)
        yield line_no, line, offset


def parse_record(line: bytes) -> Any:
    """One line's JSON; NaN, Infinity and numbers past a double (which Python's `json` writes, and orjson
    refuses) are read too, so the check can name the field that holds them."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(line)
        except ValueError:
            raise exc from None


def checked_record(line: bytes, where: str) -> dict[str, Any]:
    """The record on one line, or an InputError naming `where` (file:line), the field and the problem."""
    try:
        record = parse_record(line)
    except orjson.JSONDecodeError as exc:
        if not line.endswith(b"\n"):
            raise InputError(
                f"{where}: a torn last line ({len(line)} bytes, no newline: a collect still writing, or stopped "
                "mid-line); `sparring collect --resume` cuts it and reruns its episode"
            ) from None
        raise InputError(f"{where}: not a rollout record ({exc})") from None
    problem = record_problem(record)
    if problem is not None:
        raise InputError(f"{where}: field {problem}")
    return record


def export(
    source: str | Path,
    output: str | Path,
    *,
    normalize: str = "none",
    drop_equal_groups: bool = False,
    on_bad_record: str = "fail",
    on_skip: Callable[[str], None] | None = None,
    drop_attributed: Collection[str] = (),
    max_staleness: int | None = None,
    current_version: str | None = None,
) -> ExportStats:
    """Write the training rows of `source` to `output` (.parquet, or .jsonl); returns the counts.

    `on_bad_record`: "fail" raises the first bad record's InputError (and writes nothing); "skip"
    leaves bad records out, counts them and passes each error to `on_skip`. `max_staleness` and
    `current_version`: see the module docstring.
    """
    if max_staleness is not None and (type(max_staleness) is not int or max_staleness < 0):
        raise UsageError(f"max_staleness (--max-staleness) must be a whole number, at least 0, got {max_staleness!r}")
    if current_version is not None and (max_staleness is None or not current_version.strip()):
        raise UsageError("current_version (--current-version) goes with max_staleness and must not be empty")
    if normalize not in ("none", "std"):
        raise UsageError(f"normalize must be 'none' or 'std', got {normalize!r}")
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise UsageError(f"on_bad_record (--on-bad-record) must be 'fail' or 'skip', got {on_bad_record!r}")
    unknown = sorted(set(drop_attributed) - set(LABELS))
    if unknown:
        raise UsageError(f"drop_attributed: unknown label(s) {', '.join(unknown)}; the labels: {', '.join(LABELS)}")
    dropped = frozenset(drop_attributed)
    writer = _RowWriter(Path(output))  # checks the extension and the path before any work
    stats = ExportStats()
    rewards: dict[str, list[float]] = {}
    bad_lines: set[int] = set()
    stale_lines: set[int] = set()
    end = 0
    with open(source, "rb") as handle:
        for line_no, line, offset in _lines(handle):
            end = offset
            if not line.strip():
                continue
            try:
                record = checked_record(line, f"{source}:{line_no}")
                if max_staleness is not None and _stale(record, max_staleness, current_version, f"{source}:{line_no}"):
                    stale_lines.add(line_no)
                    continue
            except InputError as exc:
                if on_bad_record == "fail":
                    raise
                bad_lines.add(line_no)
                stats.bad_records += 1
                if len(stats.bad_record_examples) < EXAMPLES_KEPT:
                    stats.bad_record_examples.append(str(exc))
                if on_skip is not None:
                    on_skip(str(exc))
                continue
            if is_scored(record) and not (dropped and attribution_label(record, f"{source}:{line_no}") in dropped):
                rewards.setdefault(group_id(record), []).append(float(record["reward"]))
        groups = group_statistics(rewards)
        stats.groups = len(groups)
        for group in groups.values():
            stats.groups_by_size[group.size] = stats.groups_by_size.get(group.size, 0) + 1
            if group.all_equal:
                stats.equal_reward_groups += 1
                stats.equal_reward_groups_dropped += drop_equal_groups
        with writer:
            for line_no, line, _ in _lines(handle, end):  # exactly the bytes the first pass checked
                if not line.strip() or line_no in bad_lines:
                    continue
                if line_no in stale_lines:
                    stats.records += 1
                    stats.stale_left_out += 1
                    continue
                record = parse_record(line)
                if max_staleness is not None and record_staleness(record, current_version) is None:
                    stats.staleness_unknown_kept += 1
                _add_rows(record, groups, normalize, drop_equal_groups, dropped, stats, writer)
    return stats


def _stale(record: dict[str, Any], max_staleness: int, current_version: str | None, where: str) -> bool:
    """Whether a checked record is past the bound; a malformed `weight_versions` is an InputError naming it."""
    try:
        return is_stale(record, max_staleness, current_version)
    except ValueError as exc:
        raise InputError(f"{where}: field {exc}") from None


def _add_rows(
    record: dict[str, Any],
    groups: dict[str, Group],
    normalize: str,
    drop_equal_groups: bool,
    dropped: frozenset[str],
    stats: ExportStats,
    writer: _RowWriter,
) -> None:
    """One checked record's rows (or the count of why it has none)."""
    stats.records += 1
    if record.get("status") == "aborted":
        stats.aborted_left_out += 1
        return
    if not is_scored(record):
        stats.unscored_left_out += 1
        return
    if dropped and (label := attribution_label(record, "")) in dropped:
        stats.attributed_left_out[label] = stats.attributed_left_out.get(label, 0) + 1
        return
    gid = group_id(record)
    group = groups[gid]
    if drop_equal_groups and group.all_equal:
        return
    rows = list(rows_of(record, group, gid, normalize))
    if not rows:
        stats.without_policy_tokens += 1
        return
    stats.episodes_exported += 1
    stats.rows += len(rows)
    for row in rows:
        writer.add(row)


def parquet_schema() -> pa.Schema:
    """The rows' Arrow schema: ids as int32, the mask as int8, logprobs as float64 (exactly what vLLM sent)."""
    import pyarrow as pa  # imported here so that every other `sparring` command starts without it

    return pa.schema(
        [
            ("episode_id", pa.string()),
            ("env", pa.string()),
            ("task_index", pa.int64()),
            ("repeat_index", pa.int64()),
            ("task_id", pa.string()),
            ("group_id", pa.string()),
            ("group_size", pa.int32()),
            ("segment_index", pa.int32()),
            ("num_segments", pa.int32()),
            ("token_ids", pa.list_(pa.int32())),
            ("loss_mask", pa.list_(pa.int8())),
            ("logprobs", pa.list_(pa.float64())),
            (
                "weight_versions",
                pa.list_(pa.struct([("version", pa.string()), ("start", pa.int32()), ("end", pa.int32())])),
            ),
            ("reward", pa.float64()),
            ("advantage", pa.float64()),
            ("status", pa.string()),
            ("stop_reason", pa.string()),
            ("num_turns", pa.int32()),
            ("prefix_mismatches", pa.int32()),
        ]
    )


class _RowWriter:
    """Parquet in batches (bounded memory), or JSONL, chosen by the file's extension.

    Writes to a temporary file beside the output, renamed into place only when every row is written:
    a failed export (a bad record, a full disk, a bug) never leaves a file, or half of one, at the path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jsonl = path.suffix == ".jsonl"
        if not self.jsonl and path.suffix != ".parquet":
            raise UsageError(f"--output {path}: use a .parquet or .jsonl file")
        check_output_path(path, "--output")
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._batch: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._jsonl: Any = None

    def __enter__(self) -> _RowWriter:
        if self.jsonl:
            self._jsonl = open(self.tmp, "wb")
        else:
            import pyarrow.parquet as pq

            self._schema = parquet_schema()
            self._parquet = pq.ParquetWriter(self.tmp, self._schema)
        return self

    def add(self, row: dict[str, Any]) -> None:
        if self.jsonl:
            self._jsonl.write(orjson.dumps(row) + b"\n")
            return
        self._batch.append(row)
        if len(self._batch) >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch and self._parquet is not None:
            import pyarrow as pa

            self._parquet.write_table(pa.Table.from_pylist(self._batch, schema=self._schema))
            self._batch = []

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        written = False
        try:
            if exc_type is None and not self.jsonl:
                self._flush()
            written = exc_type is None
        finally:
            try:
                (self._jsonl if self.jsonl else self._parquet).close()
            except Exception:
                written = False
                raise
            finally:
                if written:
                    os.replace(self.tmp, self.path)
                else:
                    self.tmp.unlink(missing_ok=True)
