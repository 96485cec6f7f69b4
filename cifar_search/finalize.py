"""The only place the test set is read: retrain the best trial on train+validation, test once.

Every evaluation is appended to the study's ``test_evaluations`` record; a second one is
refused unless forced, and a forced one is recorded as such, so a reader of the study can
always tell how many times the test set was looked at.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from cifar_search import data, storage
from cifar_search.data import TEST_NOTE
from cifar_search.config import TrainConfig
from cifar_search.errors import CifarSearchError
from cifar_search.search import split

EVALUATIONS_ATTR = "test_evaluations"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The completed trial with the highest validation accuracy."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise CifarSearchError(f"study {study.study_name!r} has no completed trial to finalize")
    return study.best_trial


def final_config(trial: optuna.trial.FrozenTrial) -> TrainConfig:
    """The trial's configuration, trained for as many epochs as it took to its best epoch."""
    config = TrainConfig.from_dict(trial.user_attrs["train_config"])
    return config.replace(epochs=int(trial.user_attrs["best_epoch"]))


def evaluations(study: optuna.Study) -> list[dict[str, Any]]:
    return list(study.user_attrs.get(EVALUATIONS_ATTR, []))


def finalize(
    study: optuna.Study,
    *,
    data_dir: str | None = None,
    output_dir: Path,
    force: bool = False,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Retrain the best trial on the study's train+validation images and evaluate it on test.

    With ``repeats`` > 1 the retraining is done with that many seeds, to show the spread; all
    models are trained before any is evaluated, and each is evaluated once. Returns the record
    appended to the study. Raises CifarSearchError if the test set was already evaluated for
    this study and ``force`` is not set.
    """
    if repeats < 1:
        raise CifarSearchError("--repeats must be at least 1")
    previous = evaluations(study)
    if previous and not force:
        raise CifarSearchError(
            f"study {study.study_name!r} was already evaluated on the test set "
            f"({len(previous)} time(s), last: {previous[-1]['test_accuracy']:.4f}); "
            f"use --force to evaluate again (it will be recorded)"
        )
    trial = best_trial(study)
    config = final_config(trial)
    study_config = storage.frozen_config(study)
    if study_config is None:
        raise CifarSearchError(f"study {study.study_name!r} has no frozen configuration")

    from cifar_search import training  # Deferred: starts Keras, not needed for a refusal.

    images, labels = data.load_train(data_dir)
    storage.check_fingerprint(study, data.fingerprint(images, labels))
    train_idx, val_idx = split(labels, study_config)
    keep = np.union1d(train_idx, val_idx)
    test_images, test_labels = data.load_test(data_dir)

    log(f"finalize {study.study_name!r}: trial {trial.number} (val {trial.value:.4f}), "
        f"{config.epochs} epochs on {len(keep)} images, {repeats} seed(s): {config.describe()}")
    number = len(previous) + 1
    output_dir.mkdir(parents=True, exist_ok=True)
    trained = []
    for i in range(repeats):
        seeded = config.replace(seed=config.seed + i)
        recorder = training.HistoryRecorder(f"final seed {seeded.seed}", config.epochs, log)
        start = time.perf_counter()
        model = training.train(seeded, (images[keep], labels[keep]), callbacks=[recorder])
        if recorder.non_finite:
            raise CifarSearchError(f"final training diverged ({recorder.non_finite}); "
                                   f"the test set was not evaluated")
        path = output_dir / f"final-{number}-seed{seeded.seed}.keras"
        model.save(path)
        trained.append((seeded.seed, model, path, recorder.history,
                        round(time.perf_counter() - start, 1)))

    runs = []
    for seed, model, path, history, seconds in trained:
        result = training.evaluate(model, (test_images, test_labels))
        runs.append({"seed": seed, "test_accuracy": result["accuracy"],
                     "test_loss": result["loss"], "train_seconds": seconds,
                     "history": history, "model_path": str(path)})
    accuracies = [run["test_accuracy"] for run in runs]
    record = {
        "number": number,
        "forced": bool(previous),
        "trial": trial.number,
        "val_accuracy": trial.value,
        "epochs": config.epochs,
        "train_images": len(keep),
        "repeats": repeats,
        "test_accuracy": float(np.mean(accuracies)),
        "test_accuracy_std": float(np.std(accuracies)),
        "test_loss": float(np.mean([run["test_loss"] for run in runs])),
        "train_seconds": runs[0]["train_seconds"],
        "history": runs[0]["history"],
        "model_path": runs[0]["model_path"],
        "runs": runs,
        "test_note": TEST_NOTE,
        "config": config.to_dict(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    study.set_user_attr(EVALUATIONS_ATTR, [*previous, record])
    return record
