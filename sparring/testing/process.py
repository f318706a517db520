"""The scripted server in a child process, so a benchmark's own CPU time excludes the server's."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from sparring.testing.engine import DEFAULT_KV_CACHE_TOKENS, DEFAULT_MAX_MODEL_LEN, DEFAULT_WEIGHT_VERSION
from sparring.testing.responders import PRESETS
from sparring.testing.tokenizer import Template

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class FakeModelProcess:
    """The server in a child process, so a benchmark's own CPU time excludes the server's.

    Starts `python -m sparring.testing.commands --port 0 --preset ...` (the options of `sparring
    fake-model`), reads the bound URL from its first stdout line, and stops it (SIGINT, then kill) on exit.
    """

    def __init__(
        self,
        preset: str = "tictactoe",
        *,
        template: Template = "chatml",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        latency_s: float = 0.0,
        token_latency_s: float = 0.0,
        weight_version: str = DEFAULT_WEIGHT_VERSION,
        scale_out: bool = True,
        dev_mode: bool = True,
        lora: bool = True,
        max_num_seqs: int | None = None,
        kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(sorted(PRESETS))}")
        self.command = [
            sys.executable,
            "-m",
            "sparring.testing.commands",
            *("--preset", preset, "--template", template, "--max-model-len", str(max_model_len)),
            *("--host", host, "--port", str(port), "--latency", str(latency_s)),
            *("--token-latency", str(token_latency_s), "--weight-version", weight_version),
            *(() if scale_out else ("--no-scale-out",)),
            *(() if dev_mode else ("--no-dev-mode",)),
            *(() if lora else ("--no-lora",)),
            *(() if max_num_seqs is None else ("--max-num-seqs", str(max_num_seqs))),
            "--kv-cache-tokens",
            str(kv_cache_tokens),
        ]
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """The server root (base URL without `/v1`)."""
        return self.base_url.removesuffix("/v1")

    @property
    def pid(self) -> int | None:
        """The child's process id, e.g. to read its CPU time."""
        return self.process.pid if self.process else None

    def start(self) -> str:
        """Start the child and wait for its URL; returns the base URL."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, env=env, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(
                f"the fake model server did not start within {self.startup_timeout}s "
                f"(first line {line!r}); run {' '.join(self.command)} to see why"
            )
        self.base_url = line
        return line

    def stop(self) -> None:
        """Interrupt the child (as Ctrl-C would), killing it if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> FakeModelProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
