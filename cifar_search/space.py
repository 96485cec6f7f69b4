"""The search space: an Optuna trial in, a :class:`TrainConfig` out.

Conditional parameters are sampled only where they mean something (weight decay for AdamW,
rates for dropout and augmentation when those are on), so every configuration the seed
assignment used stays reachable and the baseline can be enqueued as plain parameters.
"""

from __future__ import annotations

from typing import Any

import optuna

from cifar_search.config import OPTIMIZERS, SCHEDULES, TrainConfig


def sample(trial: optuna.Trial, *, epochs: int, seed: int, variants: bool = True) -> TrainConfig:
    """Sample one training configuration for ``epochs`` epochs with training seed ``seed``.

    Without ``variants`` the layers stay exactly the prescribed ones (no batch norm, no
    dropout); the training recipe, augmentation included, is still searched.
    """
    optimizer = trial.suggest_categorical("optimizer", OPTIMIZERS)
    values: dict[str, Any] = {
        "optimizer": optimizer,
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", (64, 128, 256)),
        "schedule": trial.suggest_categorical("schedule", SCHEDULES),
        "label_smoothing": trial.suggest_categorical("label_smoothing", (0.0, 0.1)),
        "batch_norm": variants and trial.suggest_categorical("batch_norm", (False, True)),
        "epochs": epochs,
        "seed": seed,
    }
    if optimizer == "adamw":
        values["weight_decay"] = trial.suggest_float("weight_decay", 1e-4, 3e-2, log=True)
    if variants and trial.suggest_categorical("dropout", (False, True)):
        values["dropout_conv"] = trial.suggest_float("dropout_conv", 0.0, 0.3)
        values["dropout_dense"] = trial.suggest_float("dropout_dense", 0.1, 0.6)
    if trial.suggest_categorical("augment", (False, True)):
        values["augment"] = True
        values["flip"] = True
        values["shift"] = trial.suggest_float("shift", 0.03, 0.2)
        values["cutout"] = trial.suggest_categorical("cutout", (0, 8, 12))
    return TrainConfig(**values)


def params_of(config: TrainConfig) -> dict[str, Any]:
    """The trial parameters that make :func:`sample` return ``config`` (to enqueue it)."""
    params: dict[str, Any] = {
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "schedule": config.schedule,
        "label_smoothing": config.label_smoothing,
        "batch_norm": config.batch_norm,
        "dropout": bool(config.dropout_conv or config.dropout_dense),
        "augment": config.augment,
    }
    if config.optimizer == "adamw":
        params["weight_decay"] = config.weight_decay
    if params["dropout"]:
        params |= {"dropout_conv": config.dropout_conv, "dropout_dense": config.dropout_dense}
    if config.augment:
        params |= {"shift": config.shift, "cutout": config.cutout}
    return params


# The seed assignment's reference configuration: RMSprop, lr 1e-4, batch 128, no variants.
BASELINE_PARAMS: dict[str, Any] = params_of(TrainConfig())
