"""What a non-editable install carries: every data file the package reads at run time."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_tracked_data_file_under_the_package_is_package_data() -> None:
    """A file setuptools leaves out of the wheel works in the checkout and fails after `pip install .`."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(
        ["git", "ls-files", "sparring"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    data = [Path(name) for name in tracked if not name.endswith(".py")]
    assert data, "the package has data files (the support desk's world); git ls-files found none"
    missing = [
        str(path)
        for path in data
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in declared.get(".".join(path.parent.parts), []))
    ]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
