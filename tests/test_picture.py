"""`sparring graph --out FILE`: pictures drawn from the compiled graph, and the committed one kept fresh."""

from __future__ import annotations

import re
import subprocess
from html import unescape
from pathlib import Path

import pytest

from sparring.cli import main
from sparring.envs.tictactoe import TicTacToe
from sparring.graphs.episode import build_graph

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "graph.svg"
REGENERATE = ".venv/bin/sparring graph --out docs/graph.svg"


def compiled_structure() -> tuple[set[str], set[tuple[str, str]]]:
    drawable = build_graph(TicTacToe()).get_graph()
    return set(drawable.nodes), {(e.source, e.target) for e in drawable.edges}


def svg_structure(svg: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Nodes and edges as graphviz names them in its SVG (`<title>` of each node and edge group)."""
    nodes = {unescape(t) for t in re.findall(r'class="node">\s*<title>(.*?)</title>', svg)}
    edges = {tuple(unescape(t).split("->")) for t in re.findall(r'class="edge">\s*<title>(.*?)</title>', svg)}
    return nodes, edges  # type: ignore[return-value]


def test_committed_picture_matches_the_compiled_graph() -> None:
    """The README's picture shows exactly the nodes and edges that run; regenerate it when the graph changes."""
    assert COMMITTED.is_file(), f"missing {COMMITTED}: run {REGENERATE}"
    nodes, edges = svg_structure(COMMITTED.read_text())
    expected_nodes, expected_edges = compiled_structure()
    assert (nodes, edges) == (expected_nodes, expected_edges), f"docs/graph.svg is stale: run {REGENERATE}"
    assert {"policy", "user", "policy_tools", "user_tools", "verify"} <= nodes


def test_committed_picture_is_what_the_command_writes_now(tmp_path: Path) -> None:
    """Byte for byte, when this machine's graphviz is the one that drew it (styles and labels are fresh too)."""
    committed = COMMITTED.read_text()
    version = subprocess.run(["dot", "-V"], capture_output=True, text=True, check=True).stderr.split("version ")[1]
    fresh = tmp_path / "graph.svg"
    assert main(["graph", "--out", str(fresh)]) == 0
    if f"graphviz version {version.split()[0]}" in committed:
        assert fresh.read_text() == committed, f"docs/graph.svg is stale: run {REGENERATE}"
    assert svg_structure(fresh.read_text()) == compiled_structure()


def test_png_is_a_png(tmp_path: Path) -> None:
    out = tmp_path / "graph.png"
    assert main(["graph", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_mermaid_and_dot_need_nothing_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--out", str(tmp_path / "g.mmd")]) == 0
    mermaid = (tmp_path / "g.mmd").read_text()
    assert "policy_tools" in mermaid and "user_tools" in mermaid
    assert main(["graph", "--out", str(tmp_path / "g.dot")]) == 0
    dot = (tmp_path / "g.dot").read_text()
    assert '"policy" -> "policy_tools" [style=dashed];' in dot
    assert '"__start__" -> "seed";' in dot
    capsys.readouterr()
    assert main(["graph"]) == 0
    assert capsys.readouterr().out == build_graph(TicTacToe()).get_graph().draw_mermaid()


def test_unknown_extension_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--out", str(tmp_path / "graph.jpeg")]) == 2
    error = capsys.readouterr().err
    assert "unknown picture type '.jpeg'" in error and ".svg" in error
    assert not (tmp_path / "graph.jpeg").exists()


def test_missing_graphviz_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on it
    assert main(["graph", "--out", str(tmp_path / "graph.svg")]) == 2
    assert "apt-get install graphviz" in capsys.readouterr().err
    assert not (tmp_path / "graph.svg").exists()
