"""Batch-norm statistics recomputed for the weights being evaluated ("precise batch norm").

In training, a batch-norm layer normalizes with the batch's own statistics; in inference,
with moving averages of them (momentum 0.99, so about the last 100 steps), which lag behind
weights that are still changing fast. Early in training the lag dominates what the model
scores: ``bn-aug-adamw`` after 3 epochs on 10,000 images scored 25.8% on the validation split
with the moving averages and 62.4% with statistics recomputed for its final weights; after 2
epochs on the full 40K at a higher learning rate, 65.5% and 71.1% (docs/PERFORMANCE.md,
section 8). Validation accuracy is what screening, pruning and the choice of the best epoch
judge, so the lag made batch-norm trials look worse than they were.

So, at the end of every epoch (before validation, checkpoints and the end of training), the
statistics are recomputed as Wu & Johnson ("Rethinking 'Batch' in BatchNorm", 2021) describe
it: the model runs in training mode on ``IMAGES`` un-augmented training images, and each
layer's moving mean and variance become the averages of the batch means and (biased) batch
variances it sees, which is what the moving averages estimate. Training is unchanged but for
dropout's random masks (the recomputing pass draws some); it costs a forward pass over
``IMAGES`` images an epoch (0.15 s on 2 idle CPU cores, about 1% of a batch-norm epoch of
the 40K). Since it overwrites them, the layers of a model trained this way skip updating
their moving statistics every step (``FusedBatchNormalization(update_moving_statistics=False)``,
:func:`cifar_search.training.compiled_model`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

# Statistics from 1,024 images gave the validation accuracy of statistics from 10,000, within
# 0.1 points (benchmarks/bn_accuracy.py); 256 were 0.1-0.4 points short.
IMAGES = 1024
BATCH_SIZE = 512


def statistics_setter(model: keras.Model, batch_size: int = BATCH_SIZE
                      ) -> Callable[[np.ndarray], None]:
    """A function that sets every batch-norm layer's moving statistics of ``model`` to their
    average over the images it is given (built once: it holds a model of the layers' inputs)."""
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return lambda images: None
    inputs = keras.Model(model.inputs, [layer.input for layer in layers])  # as a list

    @tf.function(reduce_retracing=True)  # One graph, not op by op: two thirds of the time.
    def batch_moments(batch):
        return [tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
                for x in inputs(batch, training=True)]

    def set_statistics(images: np.ndarray) -> None:
        moments = [batch_moments(tf.constant(images[start:start + batch_size]))
                   for start in range(0, len(images), batch_size)]
        for k, layer in enumerate(layers):
            if moments:
                layer.moving_mean.assign(np.mean([m[k][0] for m in moments], axis=0))
                layer.moving_variance.assign(np.mean([m[k][1] for m in moments], axis=0))

    return set_statistics


def recompute_statistics(model: keras.Model, images: np.ndarray,
                         batch_size: int = BATCH_SIZE) -> None:
    """Set every batch-norm layer's moving statistics to their average over ``images``."""
    statistics_setter(model, batch_size)(images)


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute the batch-norm statistics after the last batch of every epoch."""

    def __init__(self, images: np.ndarray, steps_per_epoch: int) -> None:
        super().__init__()
        self.images, self.steps_per_epoch = images, steps_per_epoch

    @classmethod
    def from_training_set(cls, images: np.ndarray, steps_per_epoch: int, seed: int
                          ) -> PreciseBatchNorm:
        """The callback for a run on ``images`` in ``steps_per_epoch`` batches; it recomputes
        on a seeded sample of ``IMAGES`` of them."""
        sample = np.random.default_rng(seed).permutation(len(images))[:IMAGES]
        return cls(images[np.sort(sample)], steps_per_epoch)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._set_statistics = statistics_setter(model)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras validates between the epoch's last batch and on_epoch_end.
        if batch + 1 == self.steps_per_epoch:
            self._set_statistics(self.images)
