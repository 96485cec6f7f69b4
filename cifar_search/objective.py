"""The Optuna objective: a sampled configuration trained on the 40K, scored on the 10K validation.

It is handed the training and validation arrays once per worker and never sees the test set.
Every epoch it reports validation accuracy (for pruning), stores the curves on the trial (so
they survive a crash) and prints one progress line.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import optuna

from cifar_search import space, training
from cifar_search.config import StudyConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the trial fails with this reason recorded."""


class EpochReporter(training.HistoryRecorder):
    """Also per epoch: store the curves on the trial, report validation accuracy, prune."""

    def __init__(self, trial: optuna.Trial, epochs: int, log: Callable[[str], None]) -> None:
        super().__init__(f"trial {trial.number}", epochs, log)
        self.trial = trial
        self.pruned = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self.trial.set_user_attr("history", self.history)
        if self.non_finite:
            return
        self.trial.report(self.history["val_accuracy"][-1], epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


def original_number(trial: optuna.Trial) -> int:
    """The number of the trial this one retries (itself if it is no retry): it fixes the seed."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return trial.number if original is None else original


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; holds the worker's in-memory data."""

    train_data: tuple[np.ndarray, np.ndarray]
    val_data: tuple[np.ndarray, np.ndarray]
    study_config: StudyConfig
    log: Callable[[str], None] = print

    def __call__(self, trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        gc.collect()
        seed = self.study_config.seed + original_number(trial)
        config = space.sample(trial, epochs=self.study_config.max_epochs, seed=seed)
        trial.set_user_attr("train_config", config.to_dict())
        trial.set_user_attr("family", config.family)
        self.log(f"trial {trial.number} starts: {config.describe()}")

        reporter = EpochReporter(trial, config.epochs, self.log)
        training.train(config, self.train_data, self.val_data, callbacks=[reporter])

        if reporter.non_finite:
            trial.set_user_attr("fail_reason", reporter.non_finite)
            raise NonFiniteLossError(f"trial {trial.number}: {reporter.non_finite}")
        val = reporter.history["val_accuracy"]
        best_epoch = int(np.argmax(val)) + 1
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("epochs_run", len(val))
        if reporter.pruned:
            self.log(f"trial {trial.number} pruned after epoch {len(val)}")
            raise optuna.TrialPruned(f"pruned after epoch {len(val)}")
        return float(val[best_epoch - 1])
