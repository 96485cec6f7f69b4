"""The only place the test set is read: retrain the best trial on train+validation, test once.

Every look at the test set is reserved in the study's test-evaluation log (the ledger's)
before the test set is read; a second one is refused unless forced, and a forced one is
recorded as such, so a reader of the study can always tell how many times the test set was
looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from cifar_search import data
from cifar_search.config import TrainConfig
from cifar_search.data import TEST_NOTE
from cifar_search.errors import CifarSearchError
from cifar_search.ledger import (
    DONE,
    FINGERPRINT_ATTR,
    Ledger,
    TestEvaluation,
    check_fingerprint,
    now,
)
from cifar_search.search import split


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The completed trial with the highest validation accuracy."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise CifarSearchError(f"study {study.study_name!r} has no completed trial to finalize")
    return study.best_trial


def final_config(trial: optuna.trial.FrozenTrial) -> TrainConfig:
    """The trial's configuration, trained for as many epochs as it took to its best epoch."""
    config = TrainConfig.from_dict(trial.user_attrs["train_config"])
    return config.replace(epochs=int(trial.user_attrs["best_epoch"]))


def finalize(
    ledger: Ledger,
    *,
    data_dir: str | None = None,
    output_dir: Path,
    force: bool = False,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> TestEvaluation:
    """Retrain the best trial on the study's train+validation images and evaluate it on test.

    The look is reserved in the study's test-evaluation log before the test set is read, and
    completed after: two ``finalize`` at once cannot both look, and one that dies in between
    leaves a reserved look that still counts. With ``repeats`` > 1 the retraining is done with
    that many seeds, to show the spread; each model is evaluated once. Raises
    CifarSearchError if the test set was already looked at for this study and ``force`` is
    not set.
    """
    if repeats < 1:
        raise CifarSearchError("--repeats must be at least 1")
    study = ledger.study
    trial = best_trial(study)
    config = final_config(trial)
    study_config = ledger.config()
    if study_config is None:
        raise CifarSearchError(f"study {study.study_name!r} has no frozen configuration")

    # Deferred: they start Keras, not needed for a refusal.
    from cifar_search import training
    from cifar_search.layers import update_moving_statistics

    images, labels = data.load_train(data_dir)
    check_fingerprint(study.user_attrs.get(FINGERPRINT_ATTR), data.fingerprint(images, labels))
    train_idx, val_idx = split(labels, study_config)
    keep = np.union1d(train_idx, val_idx)
    number = ledger.check_look(force=force)  # Refused now, not after the training.
    output_dir.mkdir(parents=True, exist_ok=True)

    log(f"finalize {study.study_name!r}: trial {trial.number} (val {trial.value:.4f}), "
        f"{config.epochs} epochs on {len(keep)} images, {repeats} seed(s): {config.describe()}")
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
        update_moving_statistics(model)  # Saved to be used, maybe trained further.
        model.save(path)
        trained.append((seeded.seed, model, path, recorder.history,
                        round(time.perf_counter() - start, 1)))

    record = ledger.reserve_evaluation(trial.number, force=force)
    log(f"test evaluation #{record.number} reserved; reading the test set")
    test_images, test_labels = data.load_test(data_dir)
    runs, accuracies, losses = [], [], []
    for seed, model, path, history, seconds in trained:
        result = training.evaluate(model, (test_images, test_labels))
        accuracies.append(float(result["accuracy"]))
        losses.append(float(result["loss"]))
        runs.append({"seed": seed, "test_accuracy": accuracies[-1], "test_loss": losses[-1],
                     "train_seconds": seconds, "history": history, "model_path": str(path)})
    record = record.replace(
        status=DONE,
        val_accuracy=trial.value,
        epochs=config.epochs,
        train_images=len(keep),
        repeats=repeats,
        test_accuracy=float(np.mean(accuracies)),
        test_accuracy_std=float(np.std(accuracies)),
        test_loss=float(np.mean(losses)),
        train_seconds=runs[0]["train_seconds"],
        history=runs[0]["history"],
        model_path=runs[0]["model_path"],
        runs=runs,
        test_note=TEST_NOTE,
        config=config.to_dict(),
        time=now(),
    )
    ledger.complete_evaluation(record)
    return record
