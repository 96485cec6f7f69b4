"""The Python API: what the ``cifar-search`` command does, for a notebook or a script.

Every function takes keyword-only settings, checks them the way the command does (the same
:class:`~cifar_search.errors.CifarSearchError`, whose message says what to do) and returns
plain records. A small real search, its table and the one look at the test set::

    import cifar_search

    results = cifar_search.search("demo", n_trials=3, max_epochs=2, train_size=5000,
                                  val_size=1000)
    print(results.table())
    print(results.best)
    evaluation = cifar_search.finalize("demo")
    print(f"test accuracy {evaluation.test_accuracy:.4f}")

Importing this module loads neither TensorFlow nor the data; the functions that train do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_search.config import RANDOM_TRIALS
from cifar_search.errors import CifarSearchError
from cifar_search.ledger import TestEvaluation
from cifar_search.screening import epochs_trained
from cifar_search.storage import study_url


@dataclass(frozen=True)
class TrialRecord:
    """One trial as plain values: what it trained and how it ended."""

    number: int
    state: str
    value: float | None
    best_epoch: int | None
    epochs_run: int  # Every epoch it trained, a screening run's included.
    config: dict[str, Any]
    family: str | None
    worker: str | None


@dataclass(frozen=True)
class Results:
    """A study's trials, its best completed trial and its looks at the test set."""

    study: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    evaluations: list[TestEvaluation]
    _table: str

    def table(self) -> str:
        """The ``cifar-search status`` table."""
        return self._table


def _record(trial: Any) -> TrialRecord:
    attrs = trial.user_attrs
    return TrialRecord(
        number=trial.number, state=trial.state.name, value=trial.value,
        best_epoch=attrs.get("best_epoch"),
        epochs_run=epochs_trained(attrs),
        config=dict(attrs.get("train_config", {})), family=attrs.get("family"),
        worker=attrs.get("worker"))


def results(study: str, *, storage: str | None = None) -> Results:
    """The trials and test evaluations of ``study`` (default storage: ``studies/<study>.db``).

    Example::

        best = cifar_search.results("demo").best
        print(best.number, best.value, best.config)
    """
    from optuna.trial import TrialState

    from cifar_search.ledger import evaluations, open_ledger
    from cifar_search.report import status_table

    ledger = open_ledger(study, study_url(study, storage))
    trials = [_record(t) for t in ledger.trials()]
    complete = [t for t in trials if t.state == TrialState.COMPLETE.name]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    return Results(study, trials, best, evaluations(ledger.study), status_table(ledger.study))


def curves(study: str, trial: int | None = None, *, storage: str | None = None) -> Any:
    """A plotly figure of one trial's loss and accuracy per epoch (default: the best trial).

    Example::

        cifar_search.curves("demo").show()
    """
    from cifar_search.ledger import open_ledger
    from cifar_search.plots import best_trials, trial_curves

    ledger = open_ledger(study, study_url(study, storage))
    if trial is None:
        best = best_trials(ledger.study, 1)
        if not best:
            raise CifarSearchError(f"study {study!r} has no completed trial yet")
        return trial_curves(best[0])
    trials = [t for t in ledger.trials() if t.number == trial]
    if not trials:
        raise CifarSearchError(f"study {study!r} has no trial {trial}")
    return trial_curves(trials[0])


def structures(study: str, *, storage: str | None = None) -> str:
    """The structure comparison (baseline, bn, dropout, aug, ... against the seed's published
    numbers) and its analysis, as in the report, as text.

    Example::

        print(cifar_search.structures("demo"))
    """
    from cifar_search.ledger import open_ledger
    from cifar_search.report import structure_text

    return structure_text(open_ledger(study, study_url(study, storage)).study)


def search(
    study: str,
    *,
    storage: str | None = None,
    n_trials: int = 20,
    data_dir: str | None = None,
    max_epochs: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    seed: int | None = None,
    pruner: str | None = None,
    layers: str | None = None,
    heartbeat: int | None = None,
    presets: Sequence[str] | None = None,
    baseline: bool = True,
    timeout: float | None = None,
    sampler_seed: int | None = None,
    random_trials: int = RANDOM_TRIALS,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> Results:
    """Run (or join, or resume) a search until ``study`` holds ``n_trials`` trials in total.

    The settings left as None take the study's frozen value (or, in a new study, the
    default); ``presets`` None queues the best known preset in a new study, ``[]`` none.
    Each trial's proposal is seeded by ``sampler_seed`` (default: the study's ``seed``) and
    the trial's number, so the same call proposes the same first trials; the first
    ``random_trials`` (default 3) are drawn at random. Runs the trials in
    this process. Ctrl-C stops it with the running trial re-queued.

    Example::

        results = cifar_search.search("demo", n_trials=3, max_epochs=2, train_size=5000,
                                      val_size=1000)
        print(results.table())
    """
    from cifar_search.search import run_search
    from cifar_search.training import configure_threads

    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise CifarSearchError(f"timeout must be a positive, finite number, got {timeout}")
    url = study_url(study, storage)
    given = {key: value for key, value in (
        ("seed", seed), ("max_epochs", max_epochs), ("train_size", train_size),
        ("val_size", val_size), ("pruner", pruner), ("layers", layers),
        ("heartbeat", heartbeat)) if value is not None}
    configure_threads(threads)
    run_search(study, url, given=given, n_trials=n_trials, data_dir=data_dir,
               enqueue_baseline=baseline, timeout=timeout, sampler_seed=sampler_seed,
               random_trials=random_trials,
               presets=presets, log=log)
    return results(study, storage=url)


def finalize(
    study: str,
    *,
    storage: str | None = None,
    data_dir: str | None = None,
    force: bool = False,
    repeats: int = 1,
    output_dir: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> TestEvaluation:
    """Retrain the best trial on train+validation and evaluate it once on the test set.

    A second look needs ``force`` and is recorded. The models are saved under
    ``output_dir`` (default ``studies/<study>/``).

    Example::

        evaluation = cifar_search.finalize("demo", repeats=3)
        print(evaluation.test_accuracy, evaluation.test_accuracy_std)
    """
    from cifar_search.finalize import finalize as run_finalize
    from cifar_search.ledger import open_ledger
    from cifar_search.storage import STUDIES_DIR
    from cifar_search.training import configure_threads

    ledger = open_ledger(study, study_url(study, storage))
    configure_threads(threads)
    output = Path(output_dir) if output_dir else STUDIES_DIR / study
    return run_finalize(ledger, data_dir=data_dir, output_dir=output, force=force,
                        repeats=repeats, log=log)


def report(study: str, *, storage: str | None = None, output: str | Path | None = None) -> Path:
    """Write the study's offline HTML report (default ``studies/<study>/report/``), attach
    each finished trial's curves for the dashboard, and return the page's path.

    Example::

        print(cifar_search.report("demo"))
    """
    from cifar_search import dashboard
    from cifar_search.ledger import open_ledger
    from cifar_search.report import write_report
    from cifar_search.storage import STUDIES_DIR

    ledger = open_ledger(study, study_url(study, storage))
    path = write_report(ledger.study, Path(output) if output
                        else STUDIES_DIR / study / "report")
    dashboard.upload_curves(ledger.study, ledger.storage, dashboard.artifact_store(study))
    return path
