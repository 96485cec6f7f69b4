"""End-to-end: the installed ``cifar-search`` command on small slices of the real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import SMALL, load, one_line_error, run

from cifar_search import data


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_dir):
    """One small real search of 3 trials, shared by the tests below."""
    cwd = tmp_path_factory.mktemp("e2e")
    done = run("search", "--study", "e2e", "--n-trials", "3", *SMALL, cwd=cwd,
               data_dir=data_dir)
    return cwd, done


def test_search_runs_three_trials_with_progress_preset_then_baseline_first(searched):
    cwd, done = searched
    assert "trial 0 epoch 1/2" in done.stdout and "val_accuracy" in done.stdout
    study = load(cwd, "e2e")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    assert trials[0].user_attrs["preset"] == "bn-aug-adamw"
    assert trials[1].params["optimizer"] == "rmsprop"
    assert trials[1].params["learning_rate"] == 1e-4
    for t in trials:
        history = t.user_attrs["history"]
        assert len(history["val_accuracy"]) == len(t.intermediate_values) >= 1
        assert t.intermediate_values[1] == history["val_accuracy"][0]
    config = study.user_attrs["config"]
    assert config == {"seed": 0, "max_epochs": 2, "train_size": 1000, "val_size": 500,
                      "pruner": "screen", "layers": "variants", "heartbeat": 10,
                      "precise_bn": True}
    assert len(study.user_attrs["data_fingerprint"]) == 16


def test_status_shows_every_trial(searched):
    cwd, _ = searched
    out = run("status", "--study", "e2e", cwd=cwd).stdout
    assert "study e2e: 3 trials" in out
    assert out.count("COMPLETE") + out.count("PRUNED") == 3
    assert "rmsprop lr=0.0001 bs=128 constant" in out


def test_search_resumes_and_keeps_finished_trials(searched, data_dir):
    cwd, _ = searched
    before = [t.params for t in load(cwd, "e2e").get_trials()]
    run("search", "--study", "e2e", "--n-trials", "4", cwd=cwd, data_dir=data_dir)
    trials = load(cwd, "e2e").get_trials()
    assert len(trials) == 4 and [t.params for t in trials[:3]] == before


def test_conflicting_settings_are_refused(searched, data_dir):
    cwd, _ = searched
    done = run("search", "--study", "e2e", "--max-epochs", "3", cwd=cwd, data_dir=data_dir,
               check=False)
    assert "max_epochs=3 (study has 2)" in one_line_error(done)


def test_finalize_evaluates_once_then_refuses_unless_forced(searched, data_dir):
    cwd, _ = searched
    done = run("finalize", "--study", "e2e", cwd=cwd, data_dir=data_dir)
    assert "test accuracy" in done.stdout and "JPEG" in done.stdout
    study = load(cwd, "e2e")
    (record,) = study.user_attrs["test_evaluations"]
    best = study.best_trial
    assert record["trial"] == best.number and record["epochs"] == best.user_attrs["best_epoch"]
    assert record["train_images"] == 1500 and 0.0 < record["test_accuracy"] < 1.0
    assert Path(cwd, record["model_path"]).is_file()

    refused = run("finalize", "--study", "e2e", cwd=cwd, data_dir=data_dir, check=False)
    assert "already evaluated on the test set (1 time(s)" in one_line_error(refused)
    assert len(load(cwd, "e2e").user_attrs["test_evaluations"]) == 1

    run("finalize", "--study", "e2e", "--force", cwd=cwd, data_dir=data_dir)
    records = load(cwd, "e2e").user_attrs["test_evaluations"]
    assert [(r["number"], r["forced"]) for r in records] == [(1, False), (2, True)]
    assert "test evaluation #2 (forced)" in run("status", "--study", "e2e", cwd=cwd).stdout


def test_search_never_reads_the_test_set(tmp_path, data_dir):
    """With test_batch absent, a search works and only finalize complains."""
    folder = tmp_path / "no-test" / data.FOLDER_NAME
    folder.mkdir(parents=True)
    for name in data.TRAIN_FILES:
        (folder / name).symlink_to(data_dir / name)
    run("search", "--study", "blind", "--n-trials", "1", *SMALL, cwd=tmp_path,
        data_dir=folder.parent)
    assert load(tmp_path, "blind").get_trials()[0].state.is_finished()
    done = run("finalize", "--study", "blind", cwd=tmp_path, data_dir=folder, check=False)
    assert "test_batch" in one_line_error(done)


@pytest.mark.parametrize("args, message", [
    (["status", "--study", "nope"], "/studies/nope.db (run 'cifar-search search' first"),
    (["status", "--study", "x", "--storage", "nosuchdb://x"], "unsupported storage 'nosuchdb'"),
    (["status", "--study", "x", "--storage", "postgresql+nosuchdriver://x/db"],
     "no database driver"),
    (["search", "--study", "x", "--seed", "-1"], "seed must be an integer from 0"),
    (["search", "--study", "x", "--sampler-seed", "-1"], "sampler_seed must be an integer"),
    (["search", "--study", "x", "--train-size", "50"], "train_size must be at least 100"),
    (["search", "--study", "a{b}"], "study name 'a{b}' is not allowed"),
    (["search", "--study", "../escape"], "study name '../escape' is not allowed"),
    (["search", "--study", "/abs/path"], "study name '/abs/path' is not allowed"),
    (["search", "--study", ""], "study name '' is not allowed"),
    (["search", "--study", "x", "--timeout", "nan"], "must be a positive, finite number"),
    (["search", "--study", "x", "--recycle", "-1"], "argument --recycle: must be at least 0"),
    (["search", "--study", "x", "--random-trials", "-1"],
     "argument --random-trials: must be at least 0"),
    (["search", "--stud", "x"], "the following arguments are required: --study"),
    (["dashboard", "--study", "x", "--port", "70000"], "must be a port from 1 to 65535"),
    (["search", "--study", "x", "--storage", "mysql://u:secret@localhost/db"],
     "unsupported storage 'mysql'"),
    (["status", "--study", "x", "--storage", "not a url"], "not a storage URL"),
    (["status", "--study", "x", "--storage", "postgresql://postgres@127.0.0.1:1/test"],
     "cannot open storage"),
    (["search", "--study", "x", "--data-dir", "/nonexistent"], "CIFAR-10 folder not found"),
])
def test_bad_input_is_one_line(tmp_path, data_dir, args, message):
    line = one_line_error(run(*args, cwd=tmp_path, data_dir=data_dir, check=False))
    assert message in line and "secret" not in line
    assert not list(tmp_path.iterdir()), "bad input writes nothing"


def test_finalize_without_completed_trial_is_refused(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path}/empty.db"
    study = optuna.create_study(study_name="empty", storage=storage)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    done = run("finalize", "--study", "empty", "--storage", storage, cwd=tmp_path,
               data_dir=data_dir, check=False)
    assert "has no completed trial" in one_line_error(done)


def test_unknown_study_in_existing_storage_lists_the_others(searched):
    cwd, _ = searched
    done = run("status", "--study", "other", "--storage",
               f"sqlite:///{cwd}/studies/e2e.db", cwd=cwd, check=False)
    assert "no study named 'other'" in one_line_error(done)
    assert "e2e" in done.stderr


def test_finalize_repeats_trains_each_seed_and_records_every_evaluation(tmp_path, data_dir):
    run("search", "--study", "rep", "--n-trials", "1", *SMALL, cwd=tmp_path, data_dir=data_dir)
    done = run("finalize", "--study", "rep", "--repeats", "2", cwd=tmp_path, data_dir=data_dir)
    (record,) = load(tmp_path, "rep").user_attrs["test_evaluations"]
    assert record["repeats"] == 2 and [r["seed"] for r in record["runs"]] == [0, 1]
    accuracies = [r["test_accuracy"] for r in record["runs"]]
    assert record["test_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert done.stdout.count("test accuracy") == 3 and " ± " in done.stdout


def test_no_preset_drops_the_default_but_keeps_named_presets(tmp_path, data_dir):
    run("search", "--study", "np", "--n-trials", "1", "--no-preset", "--preset",
        "seed-baseline", *SMALL, cwd=tmp_path, data_dir=data_dir)
    (trial,) = load(tmp_path, "np").get_trials()  # The baseline equals it: not queued twice.
    assert trial.user_attrs["preset"] == "seed-baseline"


def test_a_ctrl_c_while_tensorflow_loads_is_acted_on_once_it_has_loaded(tmp_path):
    """A Ctrl-C inside TensorFlow's import left it half-registered: a soak worker died with
    "'TensorSpec' object has no attribute '_type_spec'" instead of one line."""
    script = tmp_path / "interrupted_import.py"
    script.write_text(
        "import signal, sys\n"
        "from cifar_search import cli\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow.python.checkpoint.checkpoint':\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "code = cli._guarded(lambda: cli._import_keras_quietly() or 0)\n"
        "print('keras loaded' if 'keras.src.models' in sys.modules else 'keras cut short')\n"
        "sys.exit(code)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stdout.strip() == "keras loaded"
    assert done.stderr.strip() == ("cifar-search: interrupted; what was recorded is kept: run "
                                   "the same command to go on")
