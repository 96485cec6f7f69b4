"""The Python API (``import cifar_search``) on small real data: the records it returns and
the errors it raises, the same as the command's."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cifar_search
from cifar_search import CifarSearchError


def test_importing_the_package_loads_neither_tensorflow_nor_keras():
    check = "import sys, cifar_search; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_search_finalize_and_results_return_plain_records(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/api.db"
    lines: list[str] = []
    results = cifar_search.search("api", storage=url, n_trials=2, max_epochs=1,
                                  train_size=300, val_size=100, presets=[], baseline=False,
                                  data_dir=str(data_dir), threads=1, log=lines.append)
    assert [t.state for t in results.trials] == ["COMPLETE", "COMPLETE"]
    assert results.best is not None and results.best.value == max(t.value for t in
                                                                  results.trials)
    assert results.best.epochs_run == 1 and results.best.config["epochs"] == 1
    assert "study api: 2 trials" in results.table()
    assert any(line.startswith("trial 1 complete") for line in lines)
    figure = cifar_search.curves("api", storage=url)
    assert figure.layout.title.text.startswith(f"trial {results.best.number} ")
    assert {line.name for line in figure.data} == {"train", "validation"}
    with pytest.raises(CifarSearchError, match="has no trial 7"):
        cifar_search.curves("api", trial=7, storage=url)
    compared = cifar_search.structures("api", storage=url)
    assert compared.startswith("family") and "seed reference" in compared

    evaluation = cifar_search.finalize("api", storage=url, data_dir=str(data_dir),
                                       output_dir=tmp_path / "models", threads=1,
                                       log=lines.append)
    assert evaluation.status == "done" and 0 <= evaluation.test_accuracy <= 1
    assert evaluation.trial == results.best.number
    with pytest.raises(CifarSearchError, match="already evaluated on the test set"):
        cifar_search.finalize("api", storage=url, data_dir=str(data_dir))
    assert [e.number for e in cifar_search.results("api", storage=url).evaluations] == [1]


@pytest.mark.parametrize("kwargs, message", [
    ({"study": "../x"}, "study name '../x' is not allowed"),
    ({"study": "x", "timeout": float("nan")}, "timeout must be a positive, finite number"),
    ({"study": "x", "seed": -1}, "seed must be an integer from 0"),
    ({"study": "x", "n_trials": 0}, "--n-trials must be at least 1"),
])
def test_bad_settings_raise_the_commands_errors_and_write_nothing(tmp_path, data_dir,
                                                                  kwargs, message):
    url = f"sqlite:///{tmp_path}/bad.db"
    with pytest.raises(CifarSearchError, match=message):
        cifar_search.search(storage=url, data_dir=str(data_dir), **kwargs)
    assert not list(tmp_path.iterdir())
