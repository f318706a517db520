"""Clear outputs, execution counts and run metadata from the notebooks, so git holds only their source.

    .venv/bin/python scripts/strip_notebooks.py              # every notebooks/*.ipynb
    .venv/bin/python scripts/strip_notebooks.py FILE ...     # just these

tests/test_notebooks.py fails when a committed notebook still carries outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def strip(notebook: nbformat.NotebookNode) -> bool:
    """Strip in place; True when anything changed."""
    changed = False
    for cell in notebook.cells:
        if cell.get("metadata"):
            cell.metadata = {}
            changed = True
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count = [], None
            changed = True
    extra = set(notebook.metadata) - set(KEPT_NOTEBOOK_METADATA)
    for key in extra:
        del notebook.metadata[key]
    return changed or bool(extra)


def main(paths: list[str]) -> int:
    for path in paths or sorted(str(p) for p in NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if strip(notebook):
            nbformat.write(notebook, path)
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
