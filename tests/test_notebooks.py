"""The notebooks run end to end against the scripted model server, in a real Jupyter kernel, and stay stripped."""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from sparring import Engine
from sparring.notebook import open_models, rollout_frame, wants_real_model
from sparring.views.html import rollout_page
from sparring.views.show import token_decoder

ROOT = Path(__file__).resolve().parents[1]
ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TRAINING = ("05-train-with-trl.ipynb",)
"""Notebooks that need vLLM and a trainer: tests/vllm/test_vllm_grpo.py runs them in their short form."""
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.name not in TRAINING]
ENDPOINT_VARIABLES = (
    "SPARRING_NOTEBOOK_MODEL",
    "SPARRING_POLICY_BASE_URL",
    "SPARRING_POLICY_MODEL",
    "SPARRING_USER_BASE_URL",
    "SPARRING_USER_MODEL",
)
KERNEL = "sparring-tests"


@pytest.fixture
def kernel_of_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec that runs this interpreter (the venv's), whatever other kernels the machine has."""
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    for name in ENDPOINT_VARIABLES:  # the notebooks must start their own scripted server here
        monkeypatch.delenv(name, raising=False)
    return KERNEL


def test_there_are_five_notebooks_four_on_the_scripted_server() -> None:
    assert [p.name.split("-")[0] for p in ALL_NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    assert [p.name.split("-")[0] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_of_this_python: str) -> None:
    """Every cell runs without an error (the notebooks assert on what they show)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name=kernel_of_this_python, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", ()) if o.output_type == "error"]
    assert errors == []
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_says_how_to_use_the_real_model(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.get("metadata") or (cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None))
    ]
    assert dirty == [], f"{path.name}: cells {dirty} carry outputs; run .venv/bin/python scripts/strip_notebooks.py"
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}
    top = "".join(cell.source for cell in notebook.cells[:3])
    assert "SPARRING_NOTEBOOK_MODEL=real" in top and "sparring models up" in top
    if path.name in TRAINING:
        assert "SPARRING_GRPO_SHORT=1" in top, "a training notebook says how CI runs its short form"


def test_real_model_is_chosen_by_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not wants_real_model()
    monkeypatch.setenv("SPARRING_NOTEBOOK_MODEL", "real")
    assert wants_real_model()
    monkeypatch.delenv("SPARRING_NOTEBOOK_MODEL")
    monkeypatch.setenv("SPARRING_POLICY_BASE_URL", "http://127.0.0.1:9/v1")
    assert wants_real_model()


async def test_real_endpoints_come_from_the_variables_like_sparring_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARRING_POLICY_BASE_URL", "http://127.0.0.1:9/v1,http://127.0.0.1:10/v1")
    monkeypatch.setenv("SPARRING_USER_BASE_URL", "http://127.0.0.1:11/v1")
    monkeypatch.setenv("SPARRING_USER_MODEL", "simulated")
    models = await open_models("tictactoe")
    assert models.server is None
    assert models.settings.policy_base_urls == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
    assert (models.settings.user_base_urls, models.settings.user_model) == (["http://127.0.0.1:11/v1"], "simulated")
    assert models.settings.max_steps_per_turn == 3  # the environment's own settings still apply


async def test_the_scripted_server_runs_in_tito_mode_and_the_page_shows_its_tokens() -> None:
    """The rollout frame is `sparring show --html`'s page, escaped into an iframe, with token text decoded."""
    models = await open_models("tictactoe")
    try:
        assert models.server is not None and models.settings.token_mode == "tito"
        assert models.settings.policy_tokenizer is None  # the scripted server renders prompts itself
        assert "scripted model server" in models.description
        engine = Engine(models.settings)
        try:
            record = await engine.play({})
        finally:
            await engine.aclose()
    finally:
        await models.close()
    assert record["status"] == "completed" and len(record["trajectory"]["segments"]) == 1
    frame = rollout_frame(record, models)
    assert frame.startswith('<div><iframe srcdoc="&lt;!DOCTYPE html&gt;')
    page = html.unescape(frame.split('srcdoc="', 1)[1].split('" title=', 1)[0])
    assert page == rollout_page(record, token_decoder(models.tokenizer))
    assert "Token text decoded" in page
    assert page.count('class="t m1"') == sum(record["trajectory"]["segments"][0]["loss_mask"])
