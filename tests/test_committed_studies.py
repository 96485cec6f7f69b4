"""The real studies committed under docs/studies/: small, without checkpoints, and what the
docs say they are (trial count and best value), read through the product itself."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from conftest import CommittedStudy, committed_studies, copy_of, run
from optuna.trial import TrialState

from cifar_search import ledger
from cifar_search.checkpoints import TABLE

STUDIES = committed_studies()
MAX_MEGABYTES = 2


def test_the_docs_list_committed_studies():
    assert STUDIES, "docs/studies/README.md lists no study"
    assert all(study.path.is_file() for study in STUDIES)


@pytest.mark.parametrize("study", STUDIES, ids=lambda study: study.name)
def test_a_committed_study_is_small_and_has_no_checkpoints(study: CommittedStudy):
    assert study.path.stat().st_size < MAX_MEGABYTES * 1e6
    engine = sqlalchemy.create_engine(f"sqlite:///file:{study.path}?mode=ro&uri=true")
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.select(sqlalchemy.func.count())
                                  .select_from(TABLE)).scalar() == 0
    engine.dispose()


@pytest.mark.parametrize("study", STUDIES, ids=lambda study: study.name)
def test_a_committed_study_is_what_the_docs_say(study: CommittedStudy, tmp_path):
    url = copy_of(study, tmp_path)
    loaded = optuna.load_study(study_name=study.name, storage=url)
    complete = loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == study.complete
    assert round(loaded.best_value, 4) == study.best
    looks = ledger.evaluations(loaded)
    if study.test is None:
        assert looks == []
    else:  # Finalized once: the docs give that look's test accuracy.
        assert [(look.status, look.forced) for look in looks] == [(ledger.DONE, False)]
        assert round(looks[0].test_accuracy, 4) == study.test
    done = run("status", "--study", study.name, "--storage", url, cwd=tmp_path)
    assert f"{study.best:.4f}" in done.stdout, done.stdout
