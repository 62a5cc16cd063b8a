"""notebooks/quickstart.ipynb runs top to bottom on the demo data, real-data cells skipped, as a user's kernel would."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def parameters_index(notebook: nbformat.NotebookNode) -> int:
    (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    return index


def test_the_notebook_is_stored_without_outputs_and_has_one_parameters_cell() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    source = notebook.cells[parameters_index(notebook)].source
    assert "RUN_REAL_DATA = False" in source and "INSTALL = True" in source
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "clear the outputs before committing"


@pytest.mark.slow  # a kernel and four TensorFlow starts: about a minute on 2 cores
def test_the_quickstart_notebook_trains_evaluates_and_explains_the_demo(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # What papermill does with -p: a cell after the tagged one overrides the defaults.
    overrides = f"RUN_REAL_DATA = False\nINSTALL = False\nWORK_DIR = {str(tmp_path)!r}\nWANDB = 'off'\nDEMO_EPOCHS = 1"
    notebook.cells.insert(parameters_index(notebook) + 1, new_code_cell(overrides))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel's commands import this checkout (INSTALL = False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")

    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()

    text = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    import tensorflow as tf

    # This environment's TensorFlow is in the supported range: the install keeps it, asking pip for exactly it.
    assert f"keeping TensorFlow {tf.__version__}" in text and f"tensorflow=={tf.__version__}" in text, text
    assert "GPUs:" in text and "No GPU." in text  # CI has none: the notebook says what to do
    assert "test accuracy" in text
    assert "RUN_REAL_DATA is False: skipping the real dataset" in text
    run = tmp_path / "runs" / "demo"
    assert (run / "eval" / "prediction_grid.png").is_file() and list((run / "explain").glob("*.png"))
    images = [output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(images) >= 2, "the prediction grid and the explain pictures are shown in the notebook"
    assert not (tmp_path / "runs" / "scratch").exists() and not (tmp_path / "data").exists()
