"""Batch-norm statistics recomputed before each evaluation (:mod:`cifar_search.precise_bn`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_search import precise_bn, training
from cifar_search.config import StudyConfig, TrainConfig
from cifar_search.model import build_cnn


def moving(model: keras.Model, name: str) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer(name)
    return layer.moving_mean.numpy(), layer.moving_variance.numpy()


def test_the_statistics_become_the_batches_averages():
    keras.utils.set_random_seed(0)
    model = build_cnn(batch_norm=True)
    images = np.random.default_rng(0).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    precise_bn.recompute_statistics(model, images, batch_size=64)  # Batches of 64 and 32.
    # conv1's batch norm sees conv1's output: two batches, averaged with equal weight.
    conv1 = keras.Model(model.inputs, model.get_layer("conv1").output)
    stats = [tf.nn.moments(conv1([images[s]], training=True), axes=[0, 1, 2])
             for s in (slice(0, 64), slice(64, 96))]
    mean, variance = moving(model, "conv1_bn")
    np.testing.assert_allclose(mean, (stats[0][0] + stats[1][0]) / 2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(variance, (stats[0][1] + stats[1][1]) / 2, rtol=1e-4,
                               atol=1e-6)
    # The Dense layers' too, over the batch axis only.
    assert moving(model, "dense1_bn")[0].shape == (256,)
    assert not np.allclose(moving(model, "dense1_bn")[1], 1.0)  # The initial variance.


@pytest.mark.parametrize("precise", [True, False])
def test_training_recomputes_them_after_every_epoch_when_asked(cifar_train, precise):
    config = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_norm=True, epochs=1,
                         batch_size=64, precise_bn=precise)
    images, labels = cifar_train[0][:650], cifar_train[1][:650]  # A short last batch.
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class AtValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            seen.append(moving(self.model, "conv2_bn"))

    model = training.train(config, (images, labels), (images[:200], labels[:200]),
                           callbacks=[AtValidation()])
    final = moving(model, "conv2_bn")
    callback = precise_bn.PreciseBatchNorm.from_training_set(
        images, training.steps_per_epoch(len(images), config.batch_size), config.seed)
    precise_bn.recompute_statistics(model, callback.images)
    expected = moving(model, "conv2_bn")
    # Validation saw the recomputed statistics, and the model keeps them; or neither.
    for got in (seen[0], final):
        assert np.allclose(got[0], expected[0], atol=1e-5) == precise
        assert np.allclose(got[1], expected[1], rtol=1e-4) == precise


def test_records_from_before_the_setting_keep_the_moving_statistics():
    assert TrainConfig().precise_bn and StudyConfig().precise_bn
    old = TrainConfig(batch_norm=True).to_dict()
    del old["precise_bn"]
    assert not TrainConfig.from_dict(old).precise_bn
    assert TrainConfig.from_dict(TrainConfig(batch_norm=True).to_dict()).precise_bn
    frozen = StudyConfig().to_dict()
    del frozen["precise_bn"]
    assert not StudyConfig.from_dict(frozen).precise_bn
    assert StudyConfig.from_dict(StudyConfig().to_dict()).precise_bn


def test_with_precise_bn_the_layers_leave_the_moving_statistics_to_it(cifar_train):
    """Skipping the per-step updates changes nothing that is read: the same run with
    updating layers ends with the same weights, statistics and validation accuracy."""
    config = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_norm=True, epochs=2,
                         batch_size=64, augment=True, shift=0.1, flip=True)
    images, labels = cifar_train[0][:640], cifar_train[1][:640]
    skipping = training.compiled_model(config, len(images))
    updating = training.compiled_model(config.replace(precise_bn=False), len(images))
    updating.set_weights(skipping.get_weights())
    kinds = {model: [layer.update_moving_statistics for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
             for model in (skipping, updating)}
    assert kinds == {skipping: [False] * 4, updating: [True] * 4}
    histories = []
    for model in (skipping, updating):
        recorder = training.HistoryRecorder("run", config.epochs, lambda line: None)
        training.train(config, (images, labels), (images[:200], labels[:200]),
                       callbacks=[recorder], model=model)
        histories.append(recorder.history["val_accuracy"])
    assert histories[0] == histories[1]
    for e, g in zip(updating.weights, skipping.weights):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6, err_msg=g.name)
