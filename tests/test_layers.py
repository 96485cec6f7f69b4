"""FusedBatchNormalization computes what keras.layers.BatchNormalization computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_search import training
from cifar_search.config import TrainConfig
from cifar_search.layers import FusedBatchNormalization, update_moving_statistics
from cifar_search.model import build_cnn

SHAPES = [(6, 5, 5, 4), (9, 6)]  # A conv output (NHWC) and a Dense output.
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _pair(shape, update_moving_statistics=True, **kwargs):
    """A Keras layer and a fused one with equal, non-trivial weights."""
    rng = np.random.default_rng(1)
    channels = shape[-1]
    weights = [rng.uniform(0.5, 2.0, channels), rng.normal(0, 1, channels),
               rng.normal(0, 1, channels), rng.uniform(0.5, 3.0, channels)]
    pair = (keras.layers.BatchNormalization(**kwargs),
            FusedBatchNormalization(update_moving_statistics=update_moving_statistics, **kwargs))
    for layer in pair:
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
    return pair


def _batch(shape, seed=0):
    # Mean and spread far from 0 and 1, so a wrong statistic shows.
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, shape).astype("float32"))


def _output_and_gradients(layer, x, training):
    weights = tf.constant(np.random.default_rng(7).normal(0, 1, x.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.nn.relu(y) * weights)  # Gradients unlike a plain sum.
    return [y, *tape.gradient(loss, [x, layer.gamma, layer.beta])]


@pytest.mark.parametrize("update", [True, False], ids=["updating", "not-updating"])
@pytest.mark.parametrize("shape", SHAPES, ids=["4d", "2d"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_outputs_and_gradients_equal_keras(shape, training, update):
    keras_bn, fused = _pair(shape, update_moving_statistics=update)
    x = _batch(shape)
    expected = _output_and_gradients(keras_bn, x, training)
    got = _output_and_gradients(fused, x, training)
    for name, e, g in zip(("output", "d/dx", "d/dgamma", "d/dbeta"), expected, got):
        np.testing.assert_allclose(g.numpy(), e.numpy(), **TOL, err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=["4d", "2d"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_moving_statistics_after_training_steps_equal_keras(shape, graph):
    """In a tf.function TensorFlow swaps in oneDNN's kernel, so both paths are checked."""
    layers = _pair(shape)
    for layer in layers:
        step = tf.function(lambda x, layer=layer: layer(x, training=True)) if graph else (
            lambda x, layer=layer: layer(x, training=True))
        for seed in range(3):
            step(_batch(shape, seed))
    keras_bn, fused = layers
    moved = np.abs(keras_bn.moving_variance.numpy() - _pair(shape)[0].moving_variance.numpy())
    assert moved.min() > 1e-2  # The steps did move the statistics.
    for e, g in zip(keras_bn.non_trainable_weights, fused.non_trainable_weights):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6, err_msg=g.name)
    # Inference then uses the moved statistics alike.
    x = _batch(shape, 9)
    np.testing.assert_allclose(fused(x, training=False).numpy(),
                               keras_bn(x, training=False).numpy(), **TOL)


@pytest.mark.parametrize("shape", SHAPES, ids=["4d", "2d"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_a_layer_not_updating_leaves_its_moving_statistics_alone(shape, graph):
    _, fused = _pair(shape, update_moving_statistics=False)
    before = [w.numpy() for w in fused.non_trainable_weights]
    step = tf.function(lambda x: fused(x, training=True)) if graph else (
        lambda x: fused(x, training=True))
    for seed in range(3):
        step(_batch(shape, seed))
    for e, g in zip(before, fused.non_trainable_weights):
        np.testing.assert_array_equal(g.numpy(), e, err_msg=g.name)


def test_the_comparison_sees_a_different_momentum():
    """The equality above is not vacuous: another momentum gives other moving statistics."""
    keras_bn, _ = _pair(SHAPES[0])
    _, fused = _pair(SHAPES[0], momentum=0.9)
    for layer in (keras_bn, fused):
        layer(_batch(SHAPES[0]), training=True)
    assert not np.allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-3)


def test_frozen_layer_runs_in_inference_mode_like_keras():
    keras_bn, fused = _pair(SHAPES[0])
    keras_bn.trainable = fused.trainable = False
    x = _batch(SHAPES[0])
    np.testing.assert_allclose(fused(x, training=True).numpy(),
                               keras_bn(x, training=True).numpy(), **TOL)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy())


def test_other_ranks_and_axes_fall_back_to_keras():
    keras_bn = keras.layers.BatchNormalization(axis=1)
    fused = FusedBatchNormalization(axis=1)
    x = _batch((4, 3, 5))
    np.testing.assert_allclose(fused(x, training=True).numpy(),
                               keras_bn(x, training=True).numpy(), **TOL)


def test_weights_are_named_and_ordered_as_keras():
    keras_bn, fused = _pair(SHAPES[0])
    assert [w.name for w in fused.weights] == [w.name for w in keras_bn.weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"]
    assert [w.trainable for w in fused.weights] == [w.trainable for w in keras_bn.weights]
    assert isinstance(fused, keras.layers.BatchNormalization)


def test_saved_model_loads_back_with_the_fused_layer(tmp_path):
    model = build_cnn(batch_norm=True)
    model.compile("adam", "categorical_crossentropy")
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(10, dtype="float32")[np.arange(16) % 10]
    model.fit(images, labels, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    for loaded in (keras.models.load_model(path, safe_mode=True),
                   training.model_from_bytes(training.model_to_bytes(model))):
        assert type(loaded.get_layer("conv1_bn")) is FusedBatchNormalization
        np.testing.assert_allclose(loaded.predict(images, verbose=0),
                                   model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
        for e, g in zip(model.get_layer("dense1_bn").weights,
                        loaded.get_layer("dense1_bn").weights):
            np.testing.assert_array_equal(g.numpy(), e.numpy())


def test_a_model_for_users_updates_its_statistics_again():
    model = training.compiled_model(TrainConfig(batch_norm=True), 1000)  # precise_bn: skips.
    bn = [layer for layer in model.layers if isinstance(layer, FusedBatchNormalization)]
    assert len(bn) == 4 and not any(layer.update_moving_statistics for layer in bn)
    update_moving_statistics(model)
    loaded = keras.models.clone_model(model)  # From its config, as loading does.
    assert all(loaded.get_layer(layer.name).update_moving_statistics for layer in bn)


@pytest.mark.parametrize("update", [True, False])
def test_a_saved_layer_keeps_whether_it_updates(update):
    layer = FusedBatchNormalization(update_moving_statistics=update, momentum=0.9)
    loaded = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(loaded) is FusedBatchNormalization
    assert loaded.update_moving_statistics is update and loaded.momentum == 0.9


@pytest.mark.parametrize("kwargs", [{"scale": False}, {"center": False}])
def test_without_gamma_or_beta_equals_keras(kwargs):
    keras_bn = keras.layers.BatchNormalization(**kwargs)
    fused = FusedBatchNormalization(**kwargs)
    x = _batch(SHAPES[0])
    for in_training in (True, False):
        np.testing.assert_allclose(fused(x, training=in_training).numpy(),
                                   keras_bn(x, training=in_training).numpy(), **TOL)
