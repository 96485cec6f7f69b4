"""Where batch norm's cost sits in a training step of the CNN, side by side in one run.

Every variant is ``build_cnn`` compiled with Adam and trained with ``train_on_batch`` on one
fixed batch of real images (no input pipeline, so only the step itself is timed); rounds
alternate the variants, ``--steps`` steps each, and the table gives the median step in wall
and CPU time (all of this process's threads) and both as ratios to the plain model:

* batch norm at one position only (``conv1``, ``conv2``, or the two Dense layers), with the
  project's layer (:mod:`cifar_search.layers`: TensorFlow's fused kernel on Conv2D outputs,
  Keras' ops on Dense outputs);
* batch norm everywhere, with the project's layer (updating its moving statistics every step,
  as Keras does, or leaving them to precise batch norm, as a study's training does) and with
  ``keras.layers.BatchNormalization``;
* the plain model and batch norm everywhere (Keras' layer) compiled with XLA
  (``jit_compile=True``), which fuses batch norm's element-wise work but brings its own
  convolutions;
* an experiment, batch norm everywhere with each Conv layer's batch norm, ReLU and max pool
  computed as one op that normalizes after the pool (:func:`bn_relu_pool`): the same
  mathematics while gamma >= 0 (normalizing is then increasing, so it commutes with the
  max), and a quarter of the element-wise work, but the statistics and their gradient still
  pass over the full activation.

A second table times single TensorFlow ops on a tensor the shape of ``conv1``'s output
(batch x 30 x 30 x 32), the floor any batch norm built from them pays.

Usage: python benchmarks/batch_norm_cost.py [--rounds 6] [--steps 10] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from cifar_search import data
from cifar_search.layers import FusedBatchNormalization
from cifar_search.model import build_cnn

POSITIONS = ("conv1", "conv2", "dense1", "dense2")


def only_at(*names: str) -> type[keras.layers.Layer]:
    """The project's batch-norm layer where ``names`` say, nothing (identity) elsewhere."""

    def layer(name: str) -> keras.layers.Layer:
        if name.removesuffix("_bn") in names:
            return FusedBatchNormalization(name=name)
        return keras.layers.Identity(name=name)

    return layer  # type: ignore[return-value]  # build_cnn only calls it with a name.


EPSILON = 1e-3  # Keras' default.


@tf.custom_gradient
def bn_relu_pool(x, gamma, beta):
    """Batch norm (batch statistics), ReLU, 2x2 max pool of ``x``, for gamma >= 0 only."""
    flat = tf.reshape(x, [-1, x.shape[-1]])
    count = tf.cast(tf.shape(flat)[0], x.dtype)
    mean = tf.reduce_sum(flat, 0) / count
    variance = tf.reduce_sum(flat * flat, 0) / count - mean * mean
    rstd = tf.math.rsqrt(variance + EPSILON)
    pooled = tf.nn.max_pool2d(x, 2, 2, "VALID")
    normalized = (pooled - mean) * rstd
    z = gamma * normalized + beta

    def grad(upstream, _mean, _variance):
        dz = tf.where(z > 0, upstream, tf.zeros_like(upstream))
        dbeta = tf.reduce_sum(dz, [0, 1, 2])
        dgamma = tf.reduce_sum(dz * normalized, [0, 1, 2])
        through_pool = tf.raw_ops.MaxPoolGrad(
            orig_input=x, orig_output=pooled, grad=dz * gamma * rstd, ksize=[1, 2, 2, 1],
            strides=[1, 2, 2, 1], padding="VALID")
        # The statistics' gradient is an affine function of x per channel: slope, intercept.
        dvariance = -0.5 * gamma * rstd ** 3 * tf.reduce_sum(dz * (pooled - mean), [0, 1, 2])
        slope = 2.0 * dvariance / count
        intercept = -gamma * rstd * dbeta / count - slope * mean
        return through_pool + (x * slope + intercept), dgamma, dbeta

    return (tf.nn.relu(z), mean, variance), grad


class BatchNormReluPool(keras.layers.Layer):
    """The experiment's layer: batch norm, ReLU and max pool of a Conv layer's output."""

    def build(self, shape):
        channels = (shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros",
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape=channels, initializer="ones",
                                               trainable=False, name="moving_variance")

    def call(self, x, training=None):
        if not training:
            return tf.nn.relu((tf.nn.max_pool2d(x, 2, 2, "VALID") - self.moving_mean)
                              * self.gamma * tf.math.rsqrt(self.moving_variance + EPSILON)
                              + self.beta)
        y, mean, variance = bn_relu_pool(x, tf.convert_to_tensor(self.gamma),
                                         tf.convert_to_tensor(self.beta))
        self.moving_mean.assign(self.moving_mean * 0.99 + mean * 0.01)
        self.moving_variance.assign(self.moving_variance * 0.99 + variance * 0.01)
        return y


def normalized_after_pool() -> keras.Model:
    """``build_cnn(batch_norm=True)`` with each Conv block as Conv -> BatchNormReluPool."""

    inputs = keras.Input(shape=data.IMAGE_SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    for filters, size in ((32, 3), (64, 4)):
        x = BatchNormReluPool()(keras.layers.Conv2D(filters, size)(x))
    x = keras.layers.Flatten()(x)
    for units, activation in ((256, "relu"), (data.NUM_CLASSES, "softmax")):
        x = FusedBatchNormalization()(keras.layers.Dense(units)(x))
        x = keras.layers.Activation(activation)(x)
    return keras.Model(inputs, x)


def check_experiment() -> float:
    """The largest difference between :func:`bn_relu_pool` and Keras' batch norm -> ReLU ->
    max pool, in outputs and gradients (x, gamma, beta), on random data with gamma > 0."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 3.0, (8, 10, 10, 5)), tf.float32)
    gamma = tf.constant(rng.uniform(0.2, 2.0, 5), tf.float32)
    beta = tf.constant(rng.normal(size=5), tf.float32)
    weights = tf.constant(rng.normal(size=(8, 5, 5, 5)), tf.float32)
    keras_bn = keras.layers.BatchNormalization()
    keras_bn.build(x.shape)
    keras_bn.gamma.assign(gamma)
    keras_bn.beta.assign(beta)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, gamma, beta])
        reference = tf.nn.max_pool2d(tf.nn.relu(keras_bn(x, training=True)), 2, 2, "VALID")
        experiment = bn_relu_pool(x, gamma, beta)[0]
        losses = [tf.reduce_sum(out * weights) for out in (reference, experiment)]
    pairs = [(reference, experiment),
             *zip(tape.gradient(losses[0], [x, keras_bn.gamma, keras_bn.beta]),
                  tape.gradient(losses[1], [x, gamma, beta]), strict=True)]
    return max(float(tf.reduce_max(tf.abs(a - b))) for a, b in pairs)


def op_costs(batch_size: int, rounds: int, steps: int) -> dict[str, float]:
    """Median milliseconds of single ops on a tensor shaped as ``conv1``'s output."""
    x = tf.random.normal([batch_size, 30, 30, 32])
    dy = tf.random.normal(x.shape)
    pooled = tf.nn.max_pool2d(x, 2, 2, "VALID")
    ones, zeros = tf.ones([32]), tf.zeros([32])
    ops = {
        "ReLU (forward)": lambda: tf.nn.relu(x),
        "ReLU gradient": lambda: tf.raw_ops.ReluGrad(gradients=dy, features=x),
        "add two tensors": lambda: x + dy,
        "sum over the batch, per channel": lambda: tf.reduce_sum(x, [0, 1, 2]),
        "max pool": lambda: tf.nn.max_pool2d(x, 2, 2, "VALID"),
        "max pool gradient": lambda: tf.raw_ops.MaxPoolGrad(
            orig_input=x, orig_output=pooled, grad=tf.ones_like(pooled), ksize=[1, 2, 2, 1],
            strides=[1, 2, 2, 1], padding="VALID"),
        "tf.nn.moments": lambda: tf.nn.moments(x, [0, 1, 2]),
        "fused batch norm, training": lambda: tf.raw_ops.FusedBatchNormV3(
            x=x, scale=ones, offset=zeros, mean=tf.zeros([0]), variance=tf.zeros([0]),
            is_training=True)[0],
        "fused batch norm, inference": lambda: tf.raw_ops.FusedBatchNormV3(
            x=x, scale=ones, offset=zeros, mean=zeros, variance=ones, is_training=False)[0],
        "fused batch norm gradient": lambda: tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=x, scale=ones, reserve_space_1=zeros, reserve_space_2=ones,
            reserve_space_3=ones, is_training=True)[0],
    }
    costs: dict[str, list[float]] = {name: [] for name in ops}
    traced = {name: tf.function(op) for name, op in ops.items()}
    for op in traced.values():
        op()
    for _ in range(rounds):
        for name, op in traced.items():
            start = time.perf_counter()
            for _ in range(steps):
                result = op()
            tf.nest.flatten(result)[0].numpy()
            costs[name].append((time.perf_counter() - start) / steps)
    return {name: 1000 * statistics.median(times) for name, times in costs.items()}


def variants() -> dict[str, keras.Model]:
    def compiled(model: keras.Model, jit: bool = False) -> keras.Model:
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", jit_compile=jit)
        return model

    return {
        "plain": compiled(build_cnn()),
        "conv1 only": compiled(build_cnn(batch_norm=True, batch_norm_layer=only_at("conv1"))),
        "conv2 only": compiled(build_cnn(batch_norm=True, batch_norm_layer=only_at("conv2"))),
        "Dense layers only": compiled(build_cnn(batch_norm=True,
                                                batch_norm_layer=only_at("dense1", "dense2"))),
        "everywhere (the project's layer)": compiled(build_cnn(batch_norm=True)),
        "everywhere (the project's layer, moving statistics left to precise batch norm)":
            compiled(build_cnn(batch_norm=True, batch_norm_layer=functools.partial(
                FusedBatchNormalization, update_moving_statistics=False))),
        "everywhere (Keras' layer)": compiled(
            build_cnn(batch_norm=True, batch_norm_layer=keras.layers.BatchNormalization)),
        "plain, XLA": compiled(build_cnn(), jit=True),
        "everywhere (Keras' layer), XLA": compiled(
            build_cnn(batch_norm=True, batch_norm_layer=keras.layers.BatchNormalization),
            jit=True),
        "everywhere, Conv layers normalized after the pool (experiment)":
            compiled(normalized_after_pool()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    print(f"the experiment against Keras' layers: largest difference {check_experiment():.1e}"
          " (outputs and gradients)\n")
    x, y = data.load_train(args.data_dir)
    batch = x[: args.batch_size], data.to_one_hot(y[: args.batch_size])
    models = variants()
    for model in models.values():  # Tracing (and XLA's compilation) first.
        for _ in range(3):
            model.train_on_batch(*batch)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                model.train_on_batch(*batch)
            wall[name].append((time.perf_counter() - start) / args.steps)
            cpu[name].append((time.process_time() - cpu_start) / args.steps)

    base_wall, base_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    print(f"batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps (median)\n")
    print("| batch norm | step, wall (ms) | vs plain | step, CPU (ms) | vs plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in models:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"| {name} | {1000 * w:.1f} | {w / base_wall:.2f}x | {1000 * c:.1f} | "
              f"{c / base_cpu:.2f}x |")
    print(f"\none op on a {args.batch_size} x 30 x 30 x 32 tensor (conv1's output), median of "
          f"{args.rounds} rounds of {args.steps} calls\n")
    print("| op | ms |\n| --- | ---: |")
    for name, ms in op_costs(args.batch_size, args.rounds, args.steps).items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
