"""Batch normalization on TensorFlow's fused kernel, with Keras 3's mathematics.

Keras 3's ``keras.layers.BatchNormalization`` computes its batch statistics with
``tf.nn.moments`` and normalizes with ``tf.nn.batch_normalization``: a chain of small
element-wise ops whose backward pass walks the activations many times. Keras 2 used
TensorFlow's fused batch-norm kernel instead; Keras 3 does not (upstream
keras-team/keras-core#225), and on this CPU a batch-norm epoch of the CNN cost about 2x the
CPU time of an epoch without it (docs/PERFORMANCE.md, section 8).
:class:`FusedBatchNormalization` is a drop-in subclass that runs ``FusedBatchNormV3`` (and
its fused gradient; with oneDNN, TensorFlow's graph passes turn it into oneDNN's batch norm
fused with the following ReLU) for 4-D channels-last inputs.
2-D (Dense) outputs keep Keras' arithmetic (its few small ops measured faster than the
kernel on an ``[N, 1, 1, C]`` view); masks, renorm, synchronized statistics and other axes go
to Keras' own code.

Where something else sets the moving statistics before they are read (precise batch norm,
:mod:`cifar_search.precise_bn`, the default for new studies), updating them every training
step is wasted work: ``update_moving_statistics=False`` skips it.

The mathematics are Keras 3's: the batch is normalized with its biased variance, and the
moving statistics are ``moving * momentum + batch * (1 - momentum)`` with the biased variance
too (the kernel reports the unbiased one, so it is scaled back by ``(n - 1) / n``). Weights,
their names and order, and the config are Keras' own, so checkpoints look alike.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="cifar_search")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Args:
        update_moving_statistics: whether a training step updates the moving mean and
            variance, as Keras' layer does. ``False`` is for a caller that sets them itself
            before they are read (:mod:`cifar_search.precise_bn` overwrites them at the end of
            every epoch): the step then skips the updates and their small ops (about 3% of a
            training step of the CNN, docs/PERFORMANCE.md, section 8).
        **kwargs: those of ``keras.layers.BatchNormalization``.
    """

    def __init__(self, *, update_moving_statistics: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.update_moving_statistics = update_moving_statistics

    def get_config(self) -> dict:
        return {**super().get_config(), "update_moving_statistics": self.update_moving_statistics}

    def _own(self, inputs, mask) -> bool:
        """Whether this layer's code computes the call: a plain channels-last case."""
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and self.axis in (-1, len(inputs.shape) - 1)
            and keras.backend.backend() == "tensorflow"
        )

    def call(self, inputs, training=None, mask=None):
        own = self._own(inputs, mask)
        batch_statistics = bool(training) and self.trainable
        if own and len(inputs.shape) == 4:
            return self._fused(inputs, batch_statistics)
        if own and batch_statistics and not self.update_moving_statistics:
            # Keras' own arithmetic, without the updates.
            x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
            gamma, beta = self._scale_and_offset(x)
            mean, variance = tf.nn.moments(x, list(range(len(x.shape) - 1)))
            y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
            return tf.cast(y, self.compute_dtype)
        return super().call(inputs, training=training, mask=mask)

    def _scale_and_offset(self, x):
        channels = [x.shape[-1]]
        gamma = tf.cast(self.gamma if self.scale else tf.ones(channels), x.dtype)
        beta = tf.cast(self.beta if self.center else tf.zeros(channels), x.dtype)
        return gamma, beta

    def _fused(self, inputs, batch_statistics: bool):
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma, beta = self._scale_and_offset(x)
        if batch_statistics:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.zeros([0], x.dtype),
                variance=tf.zeros([0], x.dtype), epsilon=self.epsilon,
                is_training=True, data_format="NHWC",
            )
            if self.update_moving_statistics:
                self._update(x, mean, variance)
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, x.dtype),
                variance=tf.cast(self.moving_variance, x.dtype),
                epsilon=self.epsilon, is_training=False, data_format="NHWC",
            )
        return tf.cast(y, self.compute_dtype)

    def _update(self, x, mean, variance) -> None:
        # The kernel reports the unbiased variance; Keras averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
        variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            old = tf.cast(moving, x.dtype)
            moving.assign(tf.cast(old * self.momentum + batch * (1.0 - self.momentum),
                                  moving.dtype))


def update_moving_statistics(model: keras.Model) -> None:
    """Make every :class:`FusedBatchNormalization` of ``model`` update its moving statistics
    in training again, as Keras' layer does: for a model handed to a user, who may train it
    further without precise batch norm."""
    for layer in model.layers:
        if isinstance(layer, FusedBatchNormalization):
            layer.update_moving_statistics = True
