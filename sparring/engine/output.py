"""The output of a collection: crash-safe JSONL records, the failures file, resume and retry.

The rules, which together give exactly one record per (task_index, repeat_index) in the output:
- Every record is appended as one `write()` of a whole line to a file opened with O_APPEND and no
  buffer in between, the moment its episode ends: a crash (even kill -9) loses only the episodes in
  flight, and can leave at most one cut line, at the end.
- Aborted episodes (infrastructure failures: model or environment errors) are in the output like
  every other record, and a copy goes to the failures file (`<output>.failures.jsonl`), a log
  that is only ever appended to.
- Episodes interrupted by Ctrl-C / SIGTERM are in the output as `aborted` / `interrupted`, so every
  started episode has a recorded status; they are not failures.
- `prepare_output` reads an existing output before a `--resume` or `--retry-failed` run: it cuts
  a torn last line (and says so), refuses a damaged line anywhere else, and decides per pair:
  a completed or truncated record is kept and the pair is done; an interrupted record is dropped
  and the pair runs again; an aborted record is kept and the pair is done, unless retrying failures,
  when it is dropped and the pair runs again (its copy stays in the failures file). Dropping lines
  rewrites the output atomically (a temporary file, fsync, rename), so a crash while preparing leaves
  the old output or the new one, never a mix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

Pair = tuple[int, int]


class OutputError(ValueError):
    """An output file that cannot be resumed safely; the message names the file and line."""


def failures_path(output: str | Path) -> Path:
    """Where aborted episodes of `output` are logged."""
    return Path(f"{output}.failures.jsonl")


def metrics_path(output: str | Path) -> Path:
    """Where the aggregate metrics of `output` are written."""
    return Path(f"{output}.metrics.json")


def is_interrupted(record: dict[str, Any]) -> bool:
    """An episode stopped by us (Ctrl-C, SIGTERM), not by a failure."""
    return record.get("status") == "aborted" and record.get("stop_reason") == "interrupted"


def is_failure(record: dict[str, Any]) -> bool:
    """An episode aborted by an infrastructure failure (it goes to the failures file)."""
    return record.get("status") == "aborted" and not is_interrupted(record)


@dataclass
class PreparedOutput:
    """What an existing output holds, after `prepare_output` made it safe to append to."""

    done: set[Pair] = field(default_factory=set)
    rerun: set[Pair] = field(default_factory=set)
    kept: int = 0
    cut_bytes: int = 0
    dropped_interrupted: int = 0
    dropped_failed: int = 0


def prepare_output(
    path: str | Path,
    *,
    retry_failed: bool,
    on_kept: Callable[[dict[str, Any]], None] | None = None,
) -> PreparedOutput:
    """Scan an existing output, cut a torn last line, drop the records to run again (see module docstring).

    `on_kept` sees every record that stays (to count it in the metrics).
    """
    path = Path(path)
    prepared = PreparedOutput()
    if not path.exists():
        return prepared
    keep_offsets: list[tuple[int, int]] = []  # byte ranges of the lines that stay
    good_end = 0
    with open(path, "rb") as handle:
        data_end = os.fstat(handle.fileno()).st_size
        line_no = 0
        offset = 0
        for line in handle:
            line_no += 1
            start, offset = offset, offset + len(line)
            if not line.strip():
                good_end = offset
                continue
            try:
                record = orjson.loads(line)
                pair = (int(record["task_index"]), int(record["repeat_index"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if offset == data_end and not line.endswith(b"\n"):
                    prepared.cut_bytes = len(line)  # torn by a crash while writing: the episode reruns
                    break
                raise OutputError(
                    f"{path}:{line_no}: not a rollout record ({type(exc).__name__}: {exc}); "
                    "fix or remove this line, then resume"
                ) from None
            if pair in prepared.done:
                raise OutputError(f"{path}:{line_no}: a second record for task {pair[0]} repeat {pair[1]}")
            good_end = offset
            if is_interrupted(record):
                prepared.dropped_interrupted += 1
                prepared.rerun.add(pair)
                continue
            if retry_failed and is_failure(record):
                prepared.dropped_failed += 1
                prepared.rerun.add(pair)
                continue
            prepared.rerun.discard(pair)
            prepared.done.add(pair)
            prepared.kept += 1
            keep_offsets.append((start, offset))
            if on_kept is not None:
                on_kept(record)
    if prepared.dropped_interrupted or prepared.dropped_failed:
        _rewrite(path, keep_offsets)
    elif prepared.cut_bytes:
        os.truncate(path, good_end)
    elif keep_offsets and good_end == data_end and not _ends_with_newline(path):
        with open(path, "ab") as handle:  # a whole record whose newline never made it: finish the line
            handle.write(b"\n")
    return prepared


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _rewrite(path: Path, keep: list[tuple[int, int]]) -> None:
    """Replace `path` by the kept byte ranges, atomically."""
    tmp = path.with_name(f".{path.name}.rewrite")
    with open(path, "rb") as source, open(tmp, "wb") as target:
        for start, end in keep:
            source.seek(start)
            line = source.read(end - start)
            target.write(line if line.endswith(b"\n") else line + b"\n")
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, path)


class RecordWriter:
    """Appends each record as one whole line to the output, and each failure to the failures file."""

    def __init__(self, output: str | Path, failures: str | Path | None = None) -> None:
        self.output = Path(output)
        self.failures = Path(failures) if failures is not None else failures_path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._out = os.open(self.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._failures: int | None = None

    def write(self, record: dict[str, Any]) -> None:
        """One `write()` per line, straight to the file (no user-space buffer to lose)."""
        line = orjson.dumps(record) + b"\n"
        _write_all(self._out, line)
        if is_failure(record):
            if self._failures is None:
                self._failures = os.open(self.failures, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _write_all(self._failures, line)

    def close(self) -> None:
        """Flush to disk and close both files."""
        for fd in (self._out, self._failures):
            if fd is not None:
                os.fsync(fd)
                os.close(fd)
        self._failures = None


def write_json_atomically(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it over `path`: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` may write less than asked (rare, e.g. a full disk); finish the line or raise."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])
