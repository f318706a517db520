"""Pictures of the compiled episode graph, offline: Mermaid text, Graphviz DOT, or SVG/PNG through `dot`.

Every node and edge comes from the compiled graph itself (`get_graph()`), so the picture cannot
drift from what runs; only the colours are chosen here. Solid edges are fixed, dashed ones are the
choices a routing function makes at run time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI lists FORMATS in its help without loading LangGraph
    from langchain_core.runnables.graph import Graph

    from sparring.graphs.episode import EpisodeGraph

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot", ".mmd": "mermaid", ".mermaid": "mermaid"}

# Fill colours by who acts in a node: the policy, the simulated user, or the environment.
_FILL = {
    "policy": "#dbeafe",
    "policy_tools": "#dbeafe",
    "user": "#fde68a",
    "user_tools": "#fde68a",
    "seed": "#e5e7eb",
    "verify": "#dcfce7",
}
_LEGEND = "blue: policy, yellow: simulated user, dashed: chosen by a routing function at run time"
_TERMINALS = {"__start__": "START", "__end__": "END"}


class PictureError(Exception):
    """The picture cannot be made; the message says what to install or which name to use."""


def picture_format(path: str | Path) -> str:
    """The output format a file name asks for, by extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise PictureError(f"{path}: unknown picture type {suffix or '(no extension)'!r}; use one of {known}")
    return FORMATS[suffix]


def to_dot(drawable: Graph, title: str) -> str:
    """Graphviz source for a drawable graph: one box per node, dashed edges for run-time choices."""
    lines = [
        "digraph episode {",
        f'  graph [label="{title}\\n{_LEGEND}", labelloc=t, fontname="Helvetica", fontsize=16, nodesep=0.5];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=13, fillcolor="#f3f4f6"];',
        '  edge [fontname="Helvetica", color="#4b5563"];',
    ]
    for node_id in drawable.nodes:
        if node_id in _TERMINALS:
            lines.append(f'  "{node_id}" [label="{_TERMINALS[node_id]}", shape=oval, fillcolor="#ffffff"];')
        else:
            lines.append(f'  "{node_id}" [fillcolor="{_FILL.get(node_id, "#f3f4f6")}"];')
    for edge in drawable.edges:
        attributes = ["style=dashed"] if edge.conditional else []
        if edge.data:
            attributes.append(f'label="{edge.data}"')
        style = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f'  "{edge.source}" -> "{edge.target}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(graph: EpisodeGraph, path: str | Path) -> None:
    """Write the graph's picture to `path`; the extension picks Mermaid, DOT, SVG or PNG."""
    kind = picture_format(path)
    drawable = graph.get_graph()
    if kind == "mermaid":
        Path(path).write_text(drawable.draw_mermaid())
        return
    source = to_dot(drawable, graph.name)
    if kind == "dot":
        Path(path).write_text(source)
        return
    Path(path).write_bytes(run_dot(source, kind))


def run_dot(source: str, kind: str) -> bytes:
    """Graphviz's `dot` turns the source into SVG or PNG bytes."""
    dot = shutil.which("dot")
    if dot is None:
        raise PictureError(
            "graphviz's `dot` is not installed (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
            "graphviz); a .mmd or .dot file needs nothing extra"
        )
    result = subprocess.run([dot, f"-T{kind}"], input=source.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        raise PictureError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout
