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

Each row carries `weight_versions`: spans `{version, start, end}` over the segment's `token_ids`, one
per run of a version within each policy call's completion, so a trainer can mask or weight tokens by
the weights that sampled them. Prompt tokens have no version. A segment none of whose calls reported
versions has None; tokens no span covers have no known version.

Two passes over the input, so memory holds rewards per group and one batch of rows, never the records.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sparring.core.errors import InputError, UsageError
from sparring.core.versions import VersionSpan, append_spans

if TYPE_CHECKING:
    import pyarrow as pa

EPSILON = 1e-6
ROWS_PER_BATCH = 1024


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


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a damaged line names its file and line (a torn last line is skipped)."""
    with open(path, "rb") as handle:
        lines = iter(enumerate(handle, start=1))
        for line_no, line in lines:
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.endswith(b"\n") and next(lines, None) is None:
                    return  # torn by a crash while writing; `collect --resume` reruns it
                raise InputError(f"{path}:{line_no}: not a rollout record ({exc})") from None


def export(
    source: str | Path, output: str | Path, *, normalize: str = "none", drop_equal_groups: bool = False
) -> ExportStats:
    """Write the training rows of `source` to `output` (.parquet, or .jsonl); returns the counts."""
    if normalize not in ("none", "std"):
        raise UsageError(f"normalize must be 'none' or 'std', got {normalize!r}")
    writer = _RowWriter(Path(output))  # checks the extension before any work
    stats = ExportStats()
    rewards: dict[str, list[float]] = {}
    for record in read_records(source):
        if is_scored(record):
            rewards.setdefault(group_id(record), []).append(float(record["reward"]))
    groups = group_statistics(rewards)
    stats.groups = len(groups)
    for group in groups.values():
        stats.groups_by_size[group.size] = stats.groups_by_size.get(group.size, 0) + 1
        if group.all_equal:
            stats.equal_reward_groups += 1
            stats.equal_reward_groups_dropped += drop_equal_groups
    with writer:
        for record in read_records(source):
            stats.records += 1
            if record.get("status") == "aborted":
                stats.aborted_left_out += 1
                continue
            if not is_scored(record):
                stats.unscored_left_out += 1
                continue
            gid = group_id(record)
            group = groups[gid]
            if drop_equal_groups and group.all_equal:
                continue
            rows = list(rows_of(record, group, gid, normalize))
            if not rows:
                stats.without_policy_tokens += 1
                continue
            stats.episodes_exported += 1
            stats.rows += len(rows)
            for row in rows:
                writer.add(row)
    return stats


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

    Writes to a temporary file renamed into place at the end: a failed export never leaves half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.jsonl = path.suffix == ".jsonl"
        if not self.jsonl and path.suffix != ".parquet":
            raise UsageError(f"--output {path}: use a .parquet or .jsonl file")
        self._batch: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._jsonl: Any = None

    def __enter__(self) -> _RowWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        try:
            if self.jsonl:
                self._jsonl.close()
            else:
                if exc_type is None:
                    self._flush()
                self._parquet.close()
        finally:
            if exc_type is None:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)
