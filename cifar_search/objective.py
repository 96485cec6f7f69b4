"""The Optuna objective: a sampled configuration trained on the 40K, scored on the 10K validation.

It is handed the training and validation arrays once per worker and never sees the test set.
Every epoch it reports validation accuracy (for pruning), stores the curves on the trial (so
they survive a crash), saves a checkpoint (so a retried trial resumes) and prints one line.
"""

from __future__ import annotations

import gc
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import optuna

from cifar_search import space, training
from cifar_search.checkpoints import CheckpointStore
from cifar_search.config import StudyConfig
from cifar_search.search import CLAIMED


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the trial fails with this reason recorded."""


class SurplusTrialError(RuntimeError):
    """Other workers already claimed the study's total; this trial fails without training."""


class EpochReporter(training.HistoryRecorder):
    """Also per epoch: store the curves on the trial, report validation accuracy, prune."""

    def __init__(self, trial: optuna.Trial, epochs: int, log: Callable[[str], None],
                 history: dict[str, list[float]] | None = None) -> None:
        super().__init__(f"trial {trial.number}", epochs, log, history)
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


class EpochCheckpointer(keras.callbacks.Callback):
    """Saves model and optimizer state after every epoch that training goes on from."""

    def __init__(self, store: CheckpointStore, study: str, key: int) -> None:
        super().__init__()
        self.store, self.study, self.key = store, study, key

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.model.stop_training:
            self.store.save(self.study, self.key, epoch + 1, training.model_to_bytes(self.model))


def original_number(trial: optuna.Trial) -> int:
    """The number of the trial this one retries (itself if it is no retry): it fixes the seed."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return trial.number if original is None else original


def claimed_before(study: optuna.Study, number: int) -> int:
    """How many trials numbered below ``number`` count toward the study's total."""
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=CLAIMED))


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; holds the worker's in-memory data."""

    train_data: tuple[np.ndarray, np.ndarray]
    val_data: tuple[np.ndarray, np.ndarray]
    study_config: StudyConfig
    n_trials: int
    checkpoints: CheckpointStore | None = None
    log: Callable[[str], None] = print
    current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        if claimed_before(trial.study, trial.number) >= self.n_trials:
            trial.set_user_attr("fail_reason", "surplus: the study's total was already claimed")
            trial.study.stop()
            raise SurplusTrialError(f"trial {trial.number} is beyond the study's total")
        keras.backend.clear_session()
        gc.collect()
        key = original_number(trial)
        config = space.sample(trial, epochs=self.study_config.max_epochs,
                              seed=self.study_config.seed + key,
                              variants=self.study_config.layers == "variants")
        trial.set_user_attr("train_config", config.to_dict())
        trial.set_user_attr("family", config.family)
        # Which machine and process: several machines, and trial processes, share a study.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        model, start, history = self._resume(trial, key)
        if start:
            self.log(f"trial {trial.number} resumes trial {key} after epoch {start}: "
                     f"{config.describe()}")
        else:
            self.log(f"trial {trial.number} starts: {config.describe()}")
        reporter = EpochReporter(trial, config.epochs, self.log, history)
        callbacks: list[keras.callbacks.Callback] = [reporter]
        if self.checkpoints is not None:
            callbacks.append(EpochCheckpointer(self.checkpoints, trial.study.study_name, key))
        training.train(config, self.train_data, self.val_data, callbacks=callbacks,
                       model=model, initial_epoch=start)
        if self.checkpoints is not None:
            self.checkpoints.delete(trial.study.study_name, key)

        if reporter.non_finite:
            trial.set_user_attr("fail_reason", reporter.non_finite)
            raise NonFiniteLossError(f"trial {trial.number}: {reporter.non_finite}")
        val = reporter.history["val_accuracy"]
        best_epoch = int(np.argmax(val)) + 1
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("epochs_run", len(val))
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(val)}")
        return float(val[best_epoch - 1])

    def _resume(
        self, trial: optuna.Trial, key: int
    ) -> tuple[keras.Model | None, int, dict[str, list[float]] | None]:
        """The checkpointed model, its epoch and its curves, if a checkpoint exists."""
        saved = None if self.checkpoints is None else self.checkpoints.load(
            trial.study.study_name, key)
        if saved is None:
            return None, 0, None
        history = trial.user_attrs.get("history", {})
        history = {name: values[: saved.epoch] for name, values in history.items()}
        return training.model_from_bytes(saved.payload), saved.epoch, history
