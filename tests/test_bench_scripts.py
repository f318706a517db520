"""Every benchmark script still starts: `bench/X.py --help` answers with its usage.

The scripts are not imported by the library, so a refactor that removes what one imports breaks it
silently (bench/episodes.py imported a `run_episode` that no longer existed for weeks of commits).
Each runs as its own process, with this checkout first on the path; they run a few at a time in a
thread pool started once for the module, and each script is still its own test case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))
HANG_GUARD_S = 300
"""Only against a script that hangs instead of answering; nothing is asserted about how long one takes."""


def run_help(script: Path) -> subprocess.CompletedProcess[str]:
    """`python script --help` with this checkout's sparring first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    return subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


@pytest.fixture(scope="module")
def help_runs() -> Iterator[dict[Path, Future[subprocess.CompletedProcess[str]]]]:
    """Every script's `--help` run, all submitted at once to a thread per core, at most 4 (each its own process)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        yield {script: pool.submit(run_help, script) for script in SCRIPTS}


def test_the_bench_folder_has_scripts() -> None:
    """The glob found them (a moved folder would otherwise make the test below check nothing)."""
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_bench_script_answers_help(
    script: Path, help_runs: dict[Path, Future[subprocess.CompletedProcess[str]]]
) -> None:
    """A script with a main block prints its usage and exits 0; a helper module (no main block) imports cleanly."""
    done = help_runs[script].result()
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr}"
    if 'if __name__ == "__main__":' in script.read_text():
        assert done.stdout.startswith("usage:"), f"{script.name} --help printed no usage:\n{done.stdout[:500]}"
    else:
        assert done.stdout == "", f"{script.name} is imported by other scripts, yet printed:\n{done.stdout[:500]}"
    assert "Traceback" not in done.stderr, done.stderr
