from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from cifar_search import space, training
from cifar_search.config import TrainConfig
from cifar_search.errors import CifarSearchError

SEED = np.array([1, 2])


def _images(n=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_flip_only_mirrors_some_images_and_keeps_the_others():
    images = _images()
    out = training.augment_batch(images, SEED, shift=0.0, flip=True).numpy()
    assert out.dtype == np.uint8 and out.shape == images.shape
    same = [np.array_equal(o, i) for o, i in zip(out, images)]
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0 < sum(mirrored) < len(images)


def test_shift_moves_each_image_by_its_own_offset_within_the_limit():
    images = _images()
    out = training.augment_batch(images, SEED, shift=0.1, flip=False).numpy()  # 3 px at most
    offsets = set()
    for o, i in zip(out, images):
        padded = np.pad(i, ((3, 3), (3, 3), (0, 0)), mode="reflect")
        found = [(dy, dx) for dy in range(7) for dx in range(7)
                 if np.array_equal(o, padded[dy:dy + 32, dx:dx + 32])]
        assert found, "every output must be a shifted window of its own image"
        offsets.add(found[0])
    assert len(offsets) > 5, "offsets are drawn per image, not per batch"


def test_cutout_fills_one_square_per_image_with_the_mean_colour():
    images = np.zeros((16, 32, 32, 3), np.uint8)
    out = training.augment_batch(images, SEED, shift=0.0, flip=False, cutout=8).numpy()
    filled = (out == [125, 123, 114]).all(axis=-1)
    for square in filled:
        rows, cols = np.nonzero(square)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 1 <= height <= 9 and 1 <= width <= 9
        assert square.sum() == height * width


def test_augmentation_is_a_function_of_the_seed():
    images = _images()
    first = training.augment_batch(images, SEED, shift=0.1, flip=True, cutout=8).numpy()
    again = training.augment_batch(images, SEED, shift=0.1, flip=True, cutout=8).numpy()
    other = training.augment_batch(images, SEED + 1, shift=0.1, flip=True, cutout=8).numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_dataset_yields_uint8_batches_with_one_hot_labels():
    labels = np.arange(50) % 10
    batches = list(training.make_dataset(_images(50), labels, 16, shuffle=True, seed=1))
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype.name == "uint8" and y.shape == (16, 10)
    seen = np.concatenate([yb.numpy().argmax(1) for _, yb in batches])
    assert sorted(seen.tolist()) == sorted(labels.tolist())


def test_datasets_do_not_autotune():
    """tf.data's autotuner made every epoch boundary wait for its sleeping thread (up to 8 s)."""
    labels = np.arange(50) % 10
    for dataset in (training.make_dataset(_images(50), labels, 16, shuffle=True, flip=True),
                    training.make_dataset(_images(50), labels, 16)):
        assert dataset.options().autotune.enabled is False


def test_short_training_learns_something(cifar_train):
    x, y = cifar_train
    config = TrainConfig(optimizer="adam", learning_rate=2e-3, batch_size=64, epochs=2,
                         augment=True, shift=0.1, flip=True)
    recorder = training.HistoryRecorder("t", config.epochs, lambda _: None)
    training.train(config, (x[:2000], y[:2000]), (x[2000:2500], y[2000:2500]),
                   callbacks=[recorder])
    assert len(recorder.history["val_accuracy"]) == 2
    assert recorder.history["val_accuracy"][-1] > 0.2  # chance is 0.1
    assert recorder.non_finite is None


def test_non_finite_loss_stops_training(cifar_train):
    x, y = cifar_train
    config = TrainConfig(optimizer="sgd", learning_rate=1e10, epochs=3)
    recorder = training.HistoryRecorder("t", config.epochs, lambda _: None)
    training.train(config, (x[:500], y[:500]), callbacks=[recorder])
    assert recorder.non_finite and "non-finite loss" in recorder.non_finite
    assert len(recorder.history["loss"]) < 3 or not math.isfinite(recorder.history["loss"][0])


def test_baseline_params_give_the_seed_configuration():
    config = space.sample(optuna.trial.FixedTrial(space.BASELINE_PARAMS), epochs=50, seed=0)
    assert config == TrainConfig(optimizer="rmsprop", learning_rate=1e-4, batch_size=128,
                                 epochs=50)
    assert config.family == "baseline"


def test_sampled_variants_are_recorded_in_the_family():
    params = {**space.BASELINE_PARAMS, "batch_norm": True, "dropout": True,
              "dropout_conv": 0.1, "dropout_dense": 0.3, "augment": True, "shift": 0.1,
              "cutout": 8}
    config = space.sample(optuna.trial.FixedTrial(params), epochs=5, seed=0)
    assert config.family == "bn+dropout+aug"
    assert (config.dropout_dense, config.shift, config.flip, config.cutout) == (0.3, 0.1, True, 8)


def test_invalid_train_config_is_refused():
    with pytest.raises(CifarSearchError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_same_seed_gives_the_same_run(cifar_train):
    """Bit for bit on one machine with one thread count (docs/RESULTS.md, reproducibility);
    across machines runs only agree closely."""
    x, y = cifar_train
    config = TrainConfig(optimizer="adam", learning_rate=2e-3, batch_size=64, epochs=1,
                         augment=True, shift=0.1, flip=True, cutout=8, dropout_dense=0.3,
                         batch_norm=True, seed=3)
    runs = []
    for seed in (3, 3, 4):
        recorder = training.HistoryRecorder("t", 1, lambda _: None)
        training.train(config.replace(seed=seed), (x[:1000], y[:1000]),
                       (x[1000:1500], y[1000:1500]), callbacks=[recorder])
        runs.append((recorder.history["loss"], recorder.history["val_accuracy"]))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(optimizer="adamw", learning_rate=3e-3, weight_decay=1e-3, batch_norm=True,
                dropout_conv=0.1, dropout_dense=0.4, augment=True, shift=0.12, flip=True,
                cutout=8, schedule="cosine", label_smoothing=0.1),
])
def test_params_of_inverts_sample(config):
    again = space.sample(optuna.trial.FixedTrial(space.params_of(config)),
                         epochs=config.epochs, seed=config.seed)
    assert again == config


def test_prescribed_layers_only_never_sample_variants():
    study = optuna.create_study()
    for _ in range(20):
        trial = study.ask()
        config = space.sample(trial, epochs=1, seed=0, variants=False)
        assert not (config.batch_norm or config.dropout_conv or config.dropout_dense)
        assert "batch_norm" not in trial.params and "dropout" not in trial.params
        study.tell(trial, 0.5)
