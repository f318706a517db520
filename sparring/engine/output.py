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
- Every output path is checked before the first episode starts (`check_output_path`: not a
  directory, its parent an existing directory, writable), so an OS error never costs a played episode.
- One writer per file: `OutputLock` holds an exclusive `fcntl.flock` on a lock file beside the output
  (`.<name>.lock`, holding the writer's pid, host and command) and one beside the failures file, for
  the whole run; a second collector (in this process, another one, or a `--ray` driver) stops at once
  with an error naming the holder. The kernel drops the lock when its process dies (even kill -9).

What an output was made from, so `--resume` never mixes two collections (`<output>.manifest.json`,
written atomically before the first episode of a new output):
- the input's path (informative: a moved file with the same tasks resumes), a content hash of each
  task line (its JSON with sorted keys; a line that is not JSON, as bytes), by task index; and the
  environment of tasks that name none;
- per environment played, the settings that change what a record holds (`RESULT_SETTINGS`): model
  names, sampling (temperature, top_p, max_tokens, tool_choice) of both roles, the limits (turns,
  steps, stop tokens and strings, `user_words_after_move`), the token mode as it resolves
  (auto -> tito or chat) and the policy's tokenizer folder. Not recorded: URLs (replicas come and go,
  the same model answers), API keys, time-outs, retries, connection limits, concurrency, `--limit`,
  `--shuffle`, `--repeats`: they decide which episodes run or how fast, not what an episode's record is.
On resume (or retry) the current input and settings are compared with the manifest: a task index the
output was made from whose line now differs (or is gone), or another default environment, is refused,
always; tasks appended to the input are fine (they run). Settings that differ are refused with the
differences listed; `force` accepts them deliberately (the old settings are kept in the manifest's
`earlier`, with the time of the change). An output without a manifest (older sparring) resumes only
with `force`, which adopts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from sparring.core.errors import InputError, UsageError
from sparring.core.settings import EpisodeSettings
from sparring.core.versions import STALE

Pair = tuple[int, int]


class OutputError(InputError):
    """An output file that cannot be resumed safely; the message names the file and line."""


class OutputBusy(UsageError):
    """Another process is writing this output (or failures file); the message names it when it can."""


def failures_path(output: str | Path) -> Path:
    """Where aborted episodes of `output` are logged."""
    return Path(f"{output}.failures.jsonl")


def metrics_path(output: str | Path) -> Path:
    """Where the aggregate metrics of `output` are written."""
    return Path(f"{output}.metrics.json")


def manifest_path(output: str | Path) -> Path:
    """Where what `output` was made from is recorded."""
    return Path(f"{output}.manifest.json")


def check_output_path(path: str | Path, name: str) -> Path:
    """Refuse, in one line that starts with `name` (the flag), a path records could not be appended to.

    Checked before any episode runs: not a directory, a parent that is an existing directory, and
    openable for appending (tried for real: permissions, read-only or virtual file systems such as
    /proc). A file that did not exist is not left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{name} {path}: is a directory; name a file")
    parent = path.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist (create it first)"
        raise UsageError(f"{name} {path}: the folder {parent} {problem}")
    existed = path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"{name} {path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    if not existed:
        path.unlink(missing_ok=True)
    return path


class OutputLock:
    """This process alone writes `path` while the lock is held: `fcntl.flock` on `.<name>.lock` beside it.

    The lock file holds the holder's pid, host and command, so a second writer's error names it (or,
    if the file was not written yet, the pid from /proc/locks). It is removed on release; a lock file
    left by a killed process is stale and simply taken over (the kernel released its lock). A path
    that exists and is not a regular file (a pipe, /dev/stdout) is not locked: nothing resumes it.
    """

    def __init__(self, path: str | Path, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once, or raise OutputBusy naming the process that holds it."""
        if self.path.exists() and not self.path.is_file():
            return
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UsageError(f"{self.name} {self.path}: cannot lock it ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise OutputBusy(
                    f"{self.name} {self.path} is being written by another process ({holder}); "
                    "wait for it to end, or write to another file"
                ) from None
            try:  # a holder that just let go removed the file we locked: lock the one at the path
                if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, orjson.dumps(holder))
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """Who holds the lock on `fd`'s file: what it wrote there, else its pid from /proc/locks."""
    try:
        holder = orjson.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}: {holder['command']}"
    except (orjson.JSONDecodeError, KeyError, TypeError, OSError):
        pass
    stat = os.fstat(fd)
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[5] == device and parts[1] == "FLOCK":
                return f"pid {parts[4]}"
    return "pid unknown"


def is_interrupted(record: dict[str, Any]) -> bool:
    """An episode stopped by us (Ctrl-C, SIGTERM), not by a failure."""
    return record.get("status") == "aborted" and record.get("stop_reason") == "interrupted"


def is_failure(record: dict[str, Any]) -> bool:
    """An episode aborted by an infrastructure failure (it goes to the failures file); an episode ended for
    `max_staleness` is no failure, the bound did its job."""
    return record.get("status") == "aborted" and not is_interrupted(record) and record.get("stop_reason") != STALE


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


RESULT_SETTINGS = (
    "policy_model",
    "policy_temperature",
    "policy_top_p",
    "policy_max_tokens",
    "policy_tool_choice",
    "user_model",
    "user_temperature",
    "user_top_p",
    "user_max_tokens",
    "user_tool_choice",
    "max_turns",
    "max_steps_per_turn",
    "max_user_steps_per_turn",
    "user_stop_tokens",
    "user_stop_strings",
    "user_words_after_move",
    "token_mode",
    "policy_tokenizer",
)
"""The settings that change what an episode's record holds (see the module docstring)."""


def result_settings(settings: EpisodeSettings) -> dict[str, Any]:
    """The settings of `RESULT_SETTINGS`, JSON-ready; the token mode as it resolves (auto: tito or chat)."""
    values = {name: getattr(settings, name) for name in RESULT_SETTINGS}
    if values["token_mode"] == "auto":
        values["token_mode"] = "tito" if settings.policy_tokenizer else "chat"
    return orjson.loads(orjson.dumps(values))


def task_line_hashes(path: str | Path) -> list[str]:
    """A content hash per task index (non-blank lines, as `core.task.scan_tasks` counts them).

    A JSON line is hashed as its JSON with sorted keys (reformatting changes nothing); another line as its bytes.
    """
    hashes = []
    with open(path, "rb") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                canonical = orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS)
            except (orjson.JSONDecodeError, orjson.JSONEncodeError):
                canonical = line
            hashes.append(hashlib.blake2b(canonical, digest_size=12).hexdigest())
    return hashes


@dataclass
class Manifest:
    """What an output was made from (see the module docstring)."""

    input: str
    env: str
    tasks: list[str]
    settings: dict[str, dict[str, Any]]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    earlier: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1


def make_manifest(
    input_path: str | Path, env: str, envs: Iterable[str], settings_of: Callable[[str], EpisodeSettings]
) -> Manifest:
    """This run's manifest: the input's tasks, and the result settings of every environment it plays."""
    return Manifest(
        input=str(Path(input_path).resolve()),
        env=env,
        tasks=task_line_hashes(input_path),
        settings={name: result_settings(settings_of(name)) for name in sorted(set(envs))},
    )


def read_manifest(output: str | Path) -> Manifest | None:
    """The manifest of `output`, or None when it has none."""
    path = manifest_path(output)
    try:
        data = orjson.loads(path.read_bytes())
        return Manifest(**data)
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise OutputError(
            f"{path}: not a manifest of sparring collect ({exc}); remove it and resume with --force"
        ) from None


def write_manifest(output: str | Path, manifest: Manifest) -> None:
    """Write the manifest beside `output`, atomically."""
    write_json_atomically(manifest_path(output), asdict(manifest))


def resumed_manifest(output: str | Path, current: Manifest, *, force: bool) -> tuple[Manifest, list[str]]:
    """Check that an output with records was made from these tasks and settings; the manifest to write next.

    Refuses other tasks always, other settings unless `force`, and an output without a manifest unless
    `force` (see the module docstring). Also returns what the caller should say (moved input, accepted changes).
    """
    earlier = read_manifest(output)
    notes: list[str] = []
    if earlier is None:
        if not force:
            raise OutputError(
                f"{output} has no manifest ({manifest_path(output)}), so nothing shows which tasks and settings "
                "its records were made with; if they were made from this input with these settings, "
                "resume with --force to adopt it"
            )
        return current, [f"{output}: no manifest; adopted for this input and these settings (--force)"]
    if earlier.env != current.env:
        raise OutputError(
            f"{output} was made with environment {earlier.env!r} for tasks that name none, not {current.env!r}; "
            "resume with the same --env, or write to another file"
        )
    changed = [i for i, (a, b) in enumerate(zip(earlier.tasks, current.tasks, strict=False)) if a != b]
    missing = len(earlier.tasks) - len(current.tasks)
    if changed or missing > 0:
        what = []
        if changed:
            shown = ", ".join(map(str, changed[:5])) + (", ..." if len(changed) > 5 else "")
            what.append(f"{len(changed)} of its {len(earlier.tasks)} tasks differ (task index {shown})")
        if missing > 0:
            what.append(f"the input has {len(current.tasks)} tasks, it was made from {len(earlier.tasks)}")
        raise OutputError(
            f"{output} was made from other tasks ({earlier.input}) than {current.input}: {'; '.join(what)}. "
            "Its records would be mixed with another collection's: resume with the input it was made from, "
            "or write to another file"
        )
    if earlier.input != current.input:
        notes.append(f"{output}: the input moved ({earlier.input} -> {current.input}); its tasks are the same")
    if len(current.tasks) > len(earlier.tasks):
        notes.append(f"{output}: {len(current.tasks) - len(earlier.tasks)} tasks were added to the input")
    differences = settings_differences(earlier.settings, current.settings)
    settings = {**earlier.settings, **current.settings}
    history = list(earlier.earlier)
    if differences:
        if not force:
            raise OutputError(
                f"{output} was made with other settings: {'; '.join(differences)}. Resume with the settings it was "
                "made with, or pass --force if this change is deliberate (the output then holds records of both)"
            )
        history.append({"settings": earlier.settings, "until": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        notes.append(f"{output}: settings changed (--force): {'; '.join(differences)}")
    manifest = Manifest(
        input=current.input,
        env=current.env,
        tasks=current.tasks,
        settings=settings,
        created=earlier.created,
        earlier=history,
    )
    return manifest, notes


def settings_differences(
    earlier: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """`env: name was -> is` for every result setting that differs, in environments both played."""
    differences = []
    for env in sorted(earlier.keys() & current.keys()):
        for name in RESULT_SETTINGS:
            was, now = earlier[env].get(name), current[env].get(name)
            if was != now:
                differences.append(f"{env}: {name} was {was!r}, now {now!r}")
    return differences
