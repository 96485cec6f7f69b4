"""The Optuna objective: a sampled configuration trained on the 40K, scored on the 10K validation.

It is handed the training and validation arrays once per worker and never sees the test set.
Every epoch it reports validation accuracy (for pruning), stores the curves on the trial (so
they survive a crash), saves a checkpoint (so a retried trial resumes) and prints one line.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import optuna

from cifar_search import ledger, screening, space, training
from cifar_search.checkpoints import CheckpointStore, config_hash
from cifar_search.config import StudyConfig, TrainConfig


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the trial fails with this reason recorded."""


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

    def __init__(self, store: CheckpointStore, trial_id: int, study_id: int,
                 config: str) -> None:
        super().__init__()
        self.store, self.trial_id, self.study_id, self.config = store, trial_id, study_id, config

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.model.stop_training:
            self.store.save(self.trial_id, self.study_id, self.config, epoch + 1,
                            training.model_to_bytes(self.model))


@dataclass
class Objective:
    """Trains a claimed trial; holds the worker's in-memory data.

    ``checkpoints`` (with the storage's ``study_id``) saves a checkpoint after every epoch
    and resumes a retried trial from the one its failed predecessor handed it. ``n_trials``
    (the study's total, as this worker was given it) lets a cold study hold its first
    screened trials (:func:`cifar_search.screening.holds`); None holds none.
    """

    train_data: tuple[np.ndarray, np.ndarray]
    val_data: tuple[np.ndarray, np.ndarray]
    study_config: StudyConfig
    checkpoints: CheckpointStore | None = None
    study_id: int = 0
    log: Callable[[str], None] = print
    n_trials: int | None = None

    def __call__(self, trial: optuna.Trial, trial_id: int, key: int, *,
                 between_batches: Callable[[], None] | None = None) -> float:
        """Train ``trial`` (storage id ``trial_id``; ``key``: the number of the first trial
        of its retry chain, which seeds it) and return its best validation accuracy.

        ``between_batches()`` is called after every batch; it may stop training by raising.
        """
        keras.backend.clear_session()
        gc.collect()
        config = space.sample(trial, epochs=self.study_config.max_epochs,
                              seed=self.study_config.seed + key,
                              variants=self.study_config.layers == "variants",
                              ).replace(precise_bn=self.study_config.precise_bn)
        trial.set_user_attr("train_config", config.to_dict())
        trial.set_user_attr("family", config.family)
        if (screening.screens(self.study_config)
                and ledger.PROMOTED_ATTR not in trial.user_attrs):  # Screened when held.
            self._screen(trial, config, between_batches)

        model, start, history = self._resume(trial, trial_id, config.to_dict())
        if start:
            self.log(f"trial {trial.number} resumes trial {key} after epoch {start}: "
                     f"{config.describe()}")
        else:
            self.log(f"trial {trial.number} starts: {config.describe()}")
        reporter = EpochReporter(trial, config.epochs, self.log, history)
        for epoch, value in enumerate(reporter.history["val_accuracy"], start=1):
            trial.report(value, epoch)  # The resumed epochs, for the pruner.
        callbacks: list[keras.callbacks.Callback] = [reporter]
        if between_batches is not None:
            callbacks.append(training.BatchHook(between_batches))
        if self.checkpoints is not None:
            callbacks.append(EpochCheckpointer(self.checkpoints, trial_id, self.study_id,
                                               config_hash(config.to_dict())))
        training.train(config, self.train_data, self.val_data, callbacks=callbacks,
                       model=model, initial_epoch=start)

        if reporter.non_finite:
            raise NonFiniteLossError(reporter.non_finite)
        val = reporter.history["val_accuracy"]
        best_epoch = int(np.argmax(val)) + 1
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("epochs_run", len(val))
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(val)}")
        return float(val[best_epoch - 1])

    def _screen(self, trial: optuna.Trial, config: TrainConfig,
                between_batches: Callable[[], None] | None) -> None:
        """Train the short run of :mod:`cifar_search.screening`, report it at its step, and
        hold the trial or prune it if it lags; a kept trial climbs the ladder's second rung
        where the study has one. A retry of a trial that was kept or held reports it again,
        and is again kept or held."""
        screen = trial.user_attrs.get(screening.SCREEN_ATTR)
        if screen is not None:  # Judged before its worker died: not judged twice.
            trial.report(screen["val_accuracy"][-1], screening.SCREEN_STEP)
            if ledger.HELD_ATTR in trial.user_attrs:
                raise optuna.TrialPruned("held after its screen")
        else:
            history = self._short_run(trial, config, screening.SCREEN_EPOCHS, "screen",
                                      between_batches)
            # Marked held before its short run is reported: a screened trial without the
            # mark was judged by the pruner, and so ended the holding (screening.to_promote).
            held = ledger.HELD_ATTR in trial.user_attrs or (
                self.n_trials is not None
                and screening.holds(trial.study.get_trials(deepcopy=False), self.n_trials))
            if held:
                trial.set_user_attr(ledger.HELD_ATTR, True)
            trial.report(history["val_accuracy"][-1], screening.SCREEN_STEP)
            if not held:
                self._await_peer(trial, sum(history["seconds"]), between_batches)
            pruned = held or trial.should_prune()
            trial.set_user_attr(screening.SCREEN_ATTR, history)
            if held:
                raise optuna.TrialPruned(f"held after {len(history['val_accuracy'])} epochs, "
                                         f"for the best of the first {screening.PROMOTE} to "
                                         f"go on")
            if pruned:
                raise optuna.TrialPruned(f"screened out after {screening.SCREEN_EPOCHS} "
                                         f"epochs")
        if (screening.climbs(self.study_config)
                and screening.LADDER_ATTR not in trial.user_attrs):  # Not judged twice.
            self._climb(trial, config, between_batches)

    def _await_peer(self, trial: optuna.Trial, seconds: float,
                    between_batches: Callable[[], None] | None) -> None:
        """Wait while the trial has no other short run to be judged against and another trial
        is still training its own (:func:`cifar_search.screening.awaits_peer`): at most the
        longer of its own short run's ``seconds`` and ``AWAIT_SECONDS``."""
        deadline = time.monotonic() + max(seconds, screening.AWAIT_SECONDS)
        waited = False
        while (time.monotonic() < deadline and screening.awaits_peer(
                trial.study.get_trials(deepcopy=False), trial.number)):
            if not waited:
                self.log(f"trial {trial.number} waits for another trial's short run, to be "
                         f"judged against it")
                waited = True
            if between_batches is not None:
                between_batches()
            time.sleep(1.0)

    def _climb(self, trial: optuna.Trial, config: TrainConfig,
               between_batches: Callable[[], None] | None) -> None:
        """Train the ladder's second short run and prune the trial if it lags there; its
        record is stored once judged, so a retry of a kept trial goes on to its full run."""
        epochs = screening.LADDER_EPOCHS
        history = self._short_run(trial, config, epochs, "rung", between_batches)
        lags = screening.lags_on_rung(trial.study.get_trials(deepcopy=False), trial.number,
                                      history["val_accuracy"][-1])
        trial.set_user_attr(screening.LADDER_ATTR, history)
        if lags:
            raise optuna.TrialPruned(f"screened out after its {epochs}-epoch rung")

    def _short_run(self, trial: optuna.Trial, config: TrainConfig, epochs: int, label: str,
                   between_batches: Callable[[], None] | None) -> dict[str, list[float]]:
        """Train ``config`` from scratch for ``epochs`` with its schedule fitted to them; its
        curves."""
        says = {"screen": "screens on", "rung": "climbs a rung of"}[label]
        self.log(f"trial {trial.number} {says} {epochs} epochs: {config.describe()}")
        recorder = training.HistoryRecorder(f"trial {trial.number} {label}", epochs, self.log)
        callbacks: list[keras.callbacks.Callback] = [recorder]
        if between_batches is not None:
            callbacks.append(training.BatchHook(between_batches))
        training.train(config.replace(epochs=epochs), self.train_data, self.val_data,
                       callbacks=callbacks)
        keras.backend.clear_session()  # The next run builds its own model.
        gc.collect()
        if recorder.non_finite:
            raise NonFiniteLossError(f"{recorder.non_finite} of its {label}")
        return recorder.history

    def _resume(
        self, trial: optuna.Trial, trial_id: int, config: dict
    ) -> tuple[keras.Model | None, int, dict[str, list[float]] | None]:
        """The checkpointed model, its epoch and its curves, if this trial holds a checkpoint
        trained with its configuration."""
        if self.checkpoints is None or (saved := self.checkpoints.load(trial_id)) is None:
            return None, 0, None
        if saved.config_hash != config_hash(config):
            self.log(f"trial {trial.number}: its checkpoint was trained with another "
                     f"configuration; starting over")
            self.checkpoints.delete(trial_id)
            return None, 0, None
        history = trial.user_attrs.get("history", {})
        history = {name: values[: saved.epoch] for name, values in history.items()}
        return training.model_from_bytes(saved.payload), saved.epoch, history
