from __future__ import annotations

import numpy as np
import pytest

from cifar_search.model import PRESCRIBED_PARAMS, build_cnn


def _layer_kinds(model):
    return [type(layer).__name__ + (f":{layer.activation.__name__}"
                                    if type(layer).__name__ == "Activation" else "")
            for layer in model.layers]


def test_prescribed_cnn_has_exact_parameters_and_layer_order():
    model = build_cnn()
    assert model.count_params() == PRESCRIBED_PARAMS == 626_378
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 626_378
    assert _layer_kinds(model) == [
        "InputLayer", "Rescaling",
        "Conv2D", "Activation:relu", "MaxPooling2D",
        "Conv2D", "Activation:relu", "MaxPooling2D",
        "Flatten",
        "Dense", "Activation:relu",
        "Dense", "Activation:softmax",
    ]
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    for conv, filters, size in ((conv1, 32, 3), (conv2, 64, 4)):
        assert (conv.filters, conv.kernel_size, conv.strides, conv.padding) == (
            filters, (size, size), (1, 1), "valid")
    assert model.get_layer("pool1").pool_size == (2, 2)
    assert model.get_layer("dense1").units == 256 and model.get_layer("dense2").units == 10
    assert model.output_shape == (None, 10)


def test_batch_norm_sits_between_each_layer_and_its_activation():
    kinds = _layer_kinds(build_cnn(batch_norm=True))
    for i, kind in enumerate(kinds):
        if kind in ("Conv2D", "Dense"):
            assert kinds[i + 1] == "FusedBatchNormalization"
            assert kinds[i + 2].startswith("Activation")


def test_dropout_sits_before_conv_and_dense_layers_and_keeps_trainable_size():
    model = build_cnn(dropout_conv=0.1, dropout_dense=0.4)
    names = [layer.name for layer in model.layers]
    assert names.index("conv2_dropout") == names.index("conv2") - 1
    assert names.index("dense1_dropout") == names.index("dense1") - 1
    assert names.index("dense2_dropout") == names.index("dense2") - 1
    assert model.get_layer("dense1_dropout").rate == 0.4
    assert model.count_params() == PRESCRIBED_PARAMS


def test_model_takes_raw_uint8_images_and_outputs_probabilities():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = build_cnn()(images, training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bad_dropout_rate_is_refused():
    with pytest.raises(ValueError, match="dropout_dense"):
        build_cnn(dropout_dense=1.0)
