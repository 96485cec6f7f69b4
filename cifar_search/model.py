"""The prescribed CNN, as one readable function (in the manner of ``keras.applications``).

Conv2D(32, 3x3) -> ReLU -> MaxPool(2) -> Conv2D(64, 4x4) -> ReLU -> MaxPool(2) -> Flatten
-> Dense(256) -> ReLU -> Dense(10) -> softmax; stride 1, no padding: 626,378 parameters.

Variants keep every layer size: ``batch_norm`` puts batch normalization between each
Conv/Dense layer and its activation (Keras' mathematics on TensorFlow's fused kernel,
:mod:`cifar_search.layers`), and the dropout rates put Dropout in front of the
second Conv layer (``dropout_conv``) and in front of each Dense layer (``dropout_dense``).
There is no dropout in front of the first Conv layer, which would drop raw pixels.

The model takes uint8 images and scales them to [0, 1] itself, so the training pipeline can
keep the data as uint8 and a saved model can be fed raw CIFAR-10 images.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from cifar_search.data import IMAGE_SHAPE, NUM_CLASSES
from cifar_search.layers import FusedBatchNormalization

PRESCRIBED_PARAMS = 626_378


def build_cnn(
    *,
    batch_norm: bool = False,
    dropout_conv: float = 0.0,
    dropout_dense: float = 0.0,
    batch_norm_layer: Callable[..., layers.Layer] = FusedBatchNormalization,
) -> keras.Model:
    """Build (uncompiled) the prescribed CNN or one of its assignment variants.

    Args:
        batch_norm: insert batch normalization between each Conv/Dense layer and its activation.
        dropout_conv: dropout rate in front of the second Conv layer (0 for none).
        dropout_dense: dropout rate in front of each Dense layer (0 for none).
        batch_norm_layer: makes a batch-norm layer from its ``name``;
            ``keras.layers.BatchNormalization`` computes the same, slower (benchmarks compare
            the two).
    """
    for name, rate in (("dropout_conv", dropout_conv), ("dropout_dense", dropout_dense)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")

    def block(x, layer: layers.Layer, activation: str, dropout: float = 0.0):
        name = layer.name
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
        x = layer(x)
        if batch_norm:
            x = batch_norm_layer(name=f"{name}_bn")(x)
        return layers.Activation(activation, name=f"{name}_{activation}")(x)

    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = block(x, layers.Conv2D(32, 3, name="conv1"), "relu")
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = block(x, layers.Conv2D(64, 4, name="conv2"), "relu", dropout_conv)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = block(x, layers.Dense(256, name="dense1"), "relu", dropout_dense)
    outputs = block(x, layers.Dense(NUM_CLASSES, name="dense2"), "softmax", dropout_dense)
    return keras.Model(inputs, outputs, name="cifar_cnn")
