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
Anything else goes to Keras' own code: 2-D (Dense) outputs, where Keras' few small ops
measured faster than the kernel on an ``[N, 1, 1, C]`` view, and masks, renorm, synchronized
statistics, other axes and ranks.

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
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel."""

    def _fusable(self, inputs, mask) -> bool:
        return (
            mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.backend() == "tensorflow"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = tf.cast(inputs, compute_dtype)
        channels = [x.shape[-1]]
        gamma = tf.cast(self.gamma if self.scale else tf.ones(channels), compute_dtype)
        beta = tf.cast(self.beta if self.center else tf.zeros(channels), compute_dtype)
        if training and self.trainable:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.zeros([0], compute_dtype),
                variance=tf.zeros([0], compute_dtype), epsilon=self.epsilon,
                is_training=True, data_format="NHWC",
            )
            # The kernel reports the unbiased variance; Keras averages the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), compute_dtype)
            variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
            moving_mean = tf.cast(self.moving_mean, compute_dtype)
            moving_variance = tf.cast(self.moving_variance, compute_dtype)
            self.moving_mean.assign(
                tf.cast(moving_mean * self.momentum + mean * (1.0 - self.momentum),
                        self.moving_mean.dtype)
            )
            self.moving_variance.assign(
                tf.cast(moving_variance * self.momentum + variance * (1.0 - self.momentum),
                        self.moving_variance.dtype)
            )
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, compute_dtype),
                variance=tf.cast(self.moving_variance, compute_dtype),
                epsilon=self.epsilon, is_training=False, data_format="NHWC",
            )
        return tf.cast(y, self.compute_dtype)
