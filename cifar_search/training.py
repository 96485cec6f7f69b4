"""One training run of the prescribed CNN from a :class:`TrainConfig`.

The images stay in memory as uint8 and are gathered per batch by shuffled indices; the
augmentation (random horizontal flip and reflect-padded shifts) is done on whole batches with
vectorised TensorFlow ops inside the ``tf.data`` pipeline, so it costs little next to the
network. Nothing here knows of Optuna: callers pass Keras callbacks.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cifar_search.config import HISTORY_KEYS, TrainConfig
from cifar_search.data import to_one_hot
from cifar_search.layers import FusedBatchNormalization
from cifar_search.model import build_cnn
from cifar_search.precise_bn import PreciseBatchNorm

EVAL_BATCH_SIZE = 1000
# CIFAR-10's mean colour. Not a tensor here: importing this module must not start TensorFlow's
# runtime (a search's supervisor imports it, then forks trial processes).
CUTOUT_FILL = (125, 123, 114)


class HistoryRecorder(keras.callbacks.Callback):
    """Records per-epoch curves and seconds, prints a progress line, stops on a NaN/inf loss."""

    def __init__(
        self,
        label: str,
        epochs: int,
        log: Callable[[str], None],
        history: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.label = label
        self.epochs = epochs
        self.log = log
        self.history: dict[str, list[float]] = {
            key: list((history or {}).get(key, [])) for key in (*HISTORY_KEYS, "seconds")
        }
        self.non_finite: str | None = None
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        for key in HISTORY_KEYS:
            if key in logs:
                self.history[key].append(float(logs[key]))
        self.history["seconds"].append(round(time.perf_counter() - self._start, 2))
        shown = " ".join(f"{k} {self.history[k][-1]:.4f}" for k in HISTORY_KEYS if k in logs)
        self.log(f"{self.label} epoch {epoch + 1}/{self.epochs}: {shown} "
                 f"({self.history['seconds'][-1]:.1f}s)")
        losses = [float(logs[k]) for k in ("loss", "val_loss") if k in logs]
        if not all(math.isfinite(v) for v in losses):
            self.non_finite = f"non-finite loss at epoch {epoch + 1}"
            self.model.stop_training = True


class BatchHook(keras.callbacks.Callback):
    """Calls ``hook()`` after every training and validation batch: a caller may stop
    training there by raising (a search worker acts on Ctrl-C this way)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self.hook = hook

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.hook()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.hook()


def configure_threads(threads: int | None) -> None:
    """Limit TensorFlow to ``threads`` CPU threads (None keeps its default of all cores).

    Must run before TensorFlow executes anything; later calls are ignored by TensorFlow.
    """
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:  # TensorFlow already initialised: its threads are fixed.
            pass


def _reflect(index: tf.Tensor, size: int) -> tf.Tensor:
    """Map indices in [-size+1, 2*size-2] into [0, size-1] by mirroring at the edges."""
    index = tf.abs(index)
    return tf.where(index > size - 1, 2 * (size - 1) - index, index)


def augment_batch(
    images: tf.Tensor, seed: tf.Tensor, *, shift: float, flip: bool, cutout: int = 0
) -> tf.Tensor:
    """Randomly shift (reflecting at the edges), flip and cut out a square of each image.

    Each image gets its own offsets, flip and square; shift and flip are then one gather of
    pixels for the whole batch, far cheaper than padding, cropping and reversing image by
    image. The draws are stateless functions of ``seed`` (shape [2]), so a run is repeatable
    however the pipeline schedules its parallel calls.
    """
    batch, size, channels = tf.shape(images)[0], images.shape[1], images.shape[3]
    shift_seed, flip_seed, cut_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    pad = round(shift * size)
    window = tf.range(size)
    offsets = tf.random.stateless_uniform([2, batch, 1], shift_seed, -pad, pad + 1, tf.int32)
    rows = offsets[0] + window
    cols = offsets[1] + window
    if flip:
        mirror = tf.random.stateless_uniform([batch, 1], flip_seed) < 0.5
        cols = tf.where(mirror, size - 1 - cols, cols)
    pixel = _reflect(rows, size)[:, :, None] * size + _reflect(cols, size)[:, None, :]
    flat = tf.reshape(images, [batch, size * size, channels])
    images = tf.reshape(tf.gather(flat, tf.reshape(pixel, [batch, size * size]), batch_dims=1),
                        tf.shape(images))
    if cutout:
        centre = tf.random.stateless_uniform([2, batch, 1], cut_seed, 0, size, tf.int32)
        inside_rows = tf.abs(window - centre[0]) <= cutout // 2  # (batch, size)
        inside_cols = tf.abs(window - centre[1]) <= cutout // 2
        square = inside_rows[:, :, None, None] & inside_cols[:, None, :, None]
        images = tf.where(square, tf.constant(CUTOUT_FILL, tf.uint8), images)
    return images


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    shift: float = 0.0,
    flip: bool = False,
    cutout: int = 0,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (uint8 images, one-hot labels), optionally shuffled and augmented."""
    x = tf.constant(images)
    y = tf.constant(to_one_hot(labels))
    indices = tf.data.Dataset.range(len(images))
    if shuffle:
        indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda idx: (tf.gather(x, idx), tf.gather(y, idx)), num_parallel_calls=tf.data.AUTOTUNE
    )
    if shift or flip or cutout:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        batches = tf.data.Dataset.zip(batches, seeds).map(
            lambda batch, batch_seed: (
                augment_batch(batch[0], batch_seed, shift=shift, flip=flip, cutout=cutout),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    # No autotuning: with it, epoch boundaries stalled by up to 11 s on TensorFlow 2.21 (13-18%
    # of a 3-epoch run on the full split; most likely a finished iterator waiting for the
    # autotuner's sleeping thread: PERFORMANCE.md, section 9). AUTOTUNE then means as many
    # parallel calls as there are cores.
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def learning_rate(config: TrainConfig, steps_per_epoch: int,
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate or schedule: constant, cosine decay, or 2-epoch warm-up then cosine."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    warmup = min(2 * steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / 10, total - warmup,
        warmup_target=config.learning_rate, warmup_steps=warmup,
    )


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(config, steps_per_epoch)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    return keras.optimizers.RMSprop(lr)


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Batches in an epoch: the last one may be short (the schedule and precise batch norm
    count on it)."""
    return math.ceil(train_size / batch_size)


def compiled_model(config: TrainConfig, train_size: int) -> keras.Model:
    """The CNN of ``config``, compiled with its optimizer, schedule and loss."""
    model = build_cnn(
        batch_norm=config.batch_norm,
        dropout_conv=config.dropout_conv,
        dropout_dense=config.dropout_dense,
        # Precise batch norm sets the moving statistics itself at the end of every epoch.
        batch_norm_layer=functools.partial(FusedBatchNormalization,
                                           update_moving_statistics=not config.precise_bn),
    )
    model.compile(
        optimizer=build_optimizer(config, steps_per_epoch(train_size, config.batch_size)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def train(
    config: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    model: keras.Model | None = None,
    initial_epoch: int = 0,
) -> keras.Model:
    """Train for ``config.epochs`` epochs (from ``initial_epoch``); return the trained model.

    A ``model`` may be passed to continue training it (e.g. one restored from a checkpoint).
    """
    keras.utils.set_random_seed(config.seed + initial_epoch)
    x, y = train_data
    if model is None:
        model = compiled_model(config, len(x))
    train_ds = make_dataset(
        x, y, config.batch_size, shuffle=True, seed=config.seed + initial_epoch,
        shift=config.shift if config.augment else 0.0, flip=config.flip and config.augment,
        cutout=config.cutout if config.augment else 0,
    )
    val_ds = None if val_data is None else make_dataset(*val_data, EVAL_BATCH_SIZE)
    if config.batch_norm and config.precise_bn:
        callbacks = [PreciseBatchNorm.from_training_set(
            x, steps_per_epoch(len(x), config.batch_size), config.seed),
                     *callbacks]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=list(callbacks),
        shuffle=False,  # The dataset shuffles itself.
        verbose=0,
    )
    return model


def model_to_bytes(model: keras.Model) -> bytes:
    """The model with its optimizer state, as the bytes of a ``.keras`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def model_from_bytes(payload: bytes) -> keras.Model:
    """Inverse of :func:`model_to_bytes`: a compiled model ready to continue training."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(payload)
        return keras.models.load_model(path)


def evaluate(model: keras.Model, data: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Loss and accuracy of ``model`` on ``data``, in large batches."""
    result = model.evaluate(make_dataset(*data, EVAL_BATCH_SIZE), verbose=0, return_dict=True)
    return {"loss": float(result["loss"]), "accuracy": float(result["accuracy"])}
