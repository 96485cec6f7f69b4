"""Plain, validated configuration records: one training run, and one study.

They are dataclasses of JSON-friendly values, so they can be stored on Optuna trials and
studies as user attributes and read back by any worker. Nothing here imports Keras or Optuna.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cifar_search.errors import CifarSearchError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
PRUNERS = ("screen", "ladder", "median", "hyperband", "none")
# Trials the sampler draws at random before TPE models the study: 3, not Optuna's 10, which in
# a cold start's first half hour left TPE hardly a trial (docs/PERFORMANCE.md, section 10).
RANDOM_TRIALS = 3
# "variants": batch norm and dropout may be searched; "prescribed": the bare layers only.
LAYERS = ("variants", "prescribed")
# The per-epoch curves a trial records (its "history" user attribute, with "seconds").
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Settings added after records were first written, with what a record or a frozen study
# without them did: older trials are retrained as measured and older studies go on as they
# began, so that their trials stay comparable.
BEFORE_ADDED: dict[str, Any] = {"precise_bn": False}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CifarSearchError(message)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run of the prescribed CNN depends on, besides the data."""

    optimizer: str = "rmsprop"
    learning_rate: float = 1e-4
    batch_size: int = 128
    epochs: int = 50
    schedule: str = "constant"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    batch_norm: bool = False
    dropout_conv: float = 0.0
    dropout_dense: float = 0.0
    augment: bool = False
    shift: float = 0.0
    flip: bool = False
    cutout: int = 0
    seed: int = 0
    # Recompute batch-norm statistics before each evaluation (cifar_search.precise_bn).
    precise_bn: bool = True

    def __post_init__(self) -> None:
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}")
        _check(self.learning_rate > 0, "learning_rate must be positive")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.epochs >= 1, "epochs must be at least 1")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        _check(0 <= self.dropout_conv < 1 and 0 <= self.dropout_dense < 1,
               "dropout rates must be in [0, 1)")
        _check(0 <= self.shift < 0.5, "shift must be in [0, 0.5)")
        _check(0 <= self.cutout <= 16, "cutout must be 0 to 16 pixels")

    @property
    def family(self) -> str:
        """The assignment's structure family: baseline, +bn, +dropout, +augmentation."""
        parts = [name for name, on in (("bn", self.batch_norm),
                                       ("dropout", self.dropout_conv or self.dropout_dense),
                                       ("aug", self.augment)) if on]
        return "+".join(parts) or "baseline"

    def describe(self) -> str:
        """A short one-line summary for progress lines and tables."""
        parts = [f"{self.optimizer} lr={self.learning_rate:.2g}", f"bs={self.batch_size}",
                 self.schedule]
        if self.weight_decay:
            parts.append(f"wd={self.weight_decay:.2g}")
        if self.label_smoothing:
            parts.append(f"ls={self.label_smoothing:g}")
        if self.batch_norm:
            parts.append("bn")
        if self.dropout_conv or self.dropout_dense:
            parts.append(f"drop={self.dropout_conv:.2f}/{self.dropout_dense:.2f}")
        if self.augment:
            extras = ((",flip" if self.flip else "")
                      + (f",cutout={self.cutout}" if self.cutout else ""))
            parts.append(f"aug(shift={self.shift:.2f}{extras})")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The configuration a record holds (see ``BEFORE_ADDED`` for older records)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        _check(not unknown, f"unknown training settings: {sorted(unknown)}")
        return cls(**{**BEFORE_ADDED, **values})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StudyConfig:
    """Settings every worker of a study must share; frozen in the storage by the first worker."""

    seed: int = 0
    max_epochs: int = 15
    train_size: int | None = None
    val_size: int | None = None
    pruner: str = "screen"
    layers: str = "variants"
    # Seconds between a worker's heartbeats; a trial silent for three is failed and retried.
    # Frozen: workers that judged staleness differently would fail each other's live trials.
    heartbeat: int = 10
    # Whether trials recompute batch-norm statistics before each evaluation (TrainConfig's).
    precise_bn: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**32,
               "seed must be an integer from 0 to 2**32 - 1")
        _check(self.max_epochs >= 1, "max_epochs must be at least 1")
        _check(self.heartbeat >= 1, "heartbeat must be at least 1 second")
        _check(self.pruner in PRUNERS, f"pruner must be one of {PRUNERS}")
        _check(self.layers in LAYERS, f"layers must be one of {LAYERS}")
        for name in ("train_size", "val_size"):
            size = getattr(self, name)
            _check(size is None or size >= 10 * 10,
                   f"{name} must be at least 100 (10 images per class)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudyConfig:
        """The configuration a study froze (see ``BEFORE_ADDED`` for older studies)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**BEFORE_ADDED, **{k: v for k, v in values.items() if k in known}})
