"""The example notebook runs top to bottom on the real data, as a user would run it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import optuna
from nbclient import NotebookClient

from cifar_search.ledger import DONE, counted, evaluations

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


def _outputs(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.outputs)


def test_the_example_notebook_runs_and_looks_at_the_test_set_once(tmp_path, data_dir,
                                                                    monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", str(data_dir))  # The kernel inherits it.
    shutil.copy(NOTEBOOK, tmp_path)
    for run in range(2):  # Run again: the study resumes, the test set is not read again.
        notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        shown = _outputs(notebook)
        assert "test accuracy 0." in shown and "(look #1)" in shown, shown
        assert "refused: study 'notebook-demo' was already evaluated" in shown, shown
        assert ("reading the test set" in shown) == (run == 0), shown
        assert "seed reference" in shown, shown  # The structure comparison.
        figures = [out for cell in notebook.cells if cell.cell_type == "code"
                   for out in cell.outputs if "application/vnd.plotly.v1+json" in
                   out.get("data", {})]
        assert len(figures) == 1  # The best trial's curves, drawn inline.
    study = optuna.load_study(study_name="notebook-demo",
                              storage=f"sqlite:///{tmp_path}/studies/notebook-demo.db")
    assert counted(study.trials) == 3
    (look,) = evaluations(study)
    assert look.status == DONE
