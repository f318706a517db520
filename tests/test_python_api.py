"""The public Python API as a user calls it: every name exported, and docs/python-api.md's examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sparring
from sparring.testing import FakeModelProcess

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_public_name_loads_and_nothing_else_is_offered() -> None:
    for name in sparring.__all__:
        assert getattr(sparring, name) is not None
    with pytest.raises(AttributeError):
        sparring.build_graph  # noqa: B018 - private: reached through Engine.graph only


def test_importing_sparring_loads_no_graph_machinery() -> None:
    probe = "import sys, sparring; print('langgraph' in sys.modules, 'sparring.engine.engine' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.fixture(scope="module")
def scripted_server() -> str:
    with FakeModelProcess("tictactoe") as server:
        yield server.base_url


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_the_documented_example_runs(index: int, scripted_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "SPARRING_POLICY_BASE_URL": scripted_server, "SPARRING_USER_BASE_URL": scripted_server}
    env["HOME"] = str(tmp_path)  # no `sparring models up` server of this machine's user is picked up
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "every example prints what it did"
