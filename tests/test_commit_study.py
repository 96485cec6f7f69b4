"""tools/commit_study.py: the copy the repository keeps of a study."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import optuna
import sqlalchemy

from cifar_search import storage
from cifar_search.checkpoints import CheckpointStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from commit_study import copy_study


def test_the_copy_has_the_trials_and_no_checkpoints(tmp_path):
    url = f"sqlite:///{tmp_path}/run/s.db"
    (tmp_path / "run").mkdir()
    study = optuna.create_study(study_name="s", direction="maximize",
                                storage=storage.open_storage(url, create=True))
    study.add_trial(optuna.trial.create_trial(value=0.5))
    running = study.ask()
    engine = sqlalchemy.create_engine(url)
    assert CheckpointStore(engine).save(running._trial_id, study._study_id, "hash", 3,
                                        b"x" * 1_000_000)
    engine.dispose()

    copy = copy_study(tmp_path / "run" / "s.db", tmp_path / "docs")

    assert copy == tmp_path / "docs" / "s.db"
    with sqlite3.connect(copy) as connection:
        assert connection.execute("SELECT COUNT(*) FROM cifar_search_trial_checkpoints"
                                  ).fetchone() == (0,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert copy.stat().st_size < 1_000_000  # Vacuumed: the checkpoint's pages are gone.
    copied = optuna.load_study(study_name="s", storage=f"sqlite:///{copy}")
    assert [t.state.name for t in copied.trials] == ["COMPLETE", "RUNNING"]
    assert sorted(p.name for p in copy.parent.iterdir()) == ["s.db"]
