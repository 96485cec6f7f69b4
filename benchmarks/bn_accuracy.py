"""Keras' batch norm against the fused one in a real short training run: same seed, same data.

Trains the ``bn-aug-adamw`` preset (or another) from the same seed once with
``keras.layers.BatchNormalization`` and once with
:class:`cifar_search.layers.FusedBatchNormalization` on ``--images`` training images,
validates both on the project's 10,000-image validation split (``data.split_indices``,
seed 0), and prints each run's accuracies and seconds per epoch. The two compute the same
mathematics, so the accuracies should be alike (float round-off differs, so not identical).
Both train with the moving statistics only (``precise_bn=False``).

A second table shows what those moving statistics cost: each fused run's model validated
with them, then with statistics recomputed (:mod:`cifar_search.precise_bn`) on 256, 1,024
(the default) and 10,240 of its training images.

Usage: python benchmarks/bn_accuracy.py [--preset bn-aug-adamw] [--epochs 3] [--images 10000]
       [--seeds 1] [--learning-rate LR]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from cifar_search import data, precise_bn, presets, training
from cifar_search.layers import FusedBatchNormalization
from cifar_search.model import build_cnn

SAMPLES = (256, precise_bn.IMAGES, 10 * precise_bn.IMAGES)


def run(config, layer, train_data, val_data) -> tuple[dict[str, list[float]], keras.Model]:
    """The per-epoch history (curves and seconds) of one training run with ``layer``, and
    its model."""
    keras.utils.set_random_seed(config.seed)  # As training.train does before building.
    model = build_cnn(batch_norm=True, dropout_conv=config.dropout_conv,
                      dropout_dense=config.dropout_dense, batch_norm_layer=layer)
    steps = -(-len(train_data[0]) // config.batch_size)
    model.compile(
        optimizer=training.build_optimizer(config, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    label = f"{layer.__name__} seed {config.seed}"
    recorder = training.HistoryRecorder(label, config.epochs, print)
    training.train(config, train_data, val_data, callbacks=[recorder], model=model)
    return recorder.history, model


def recomputed(model: keras.Model, images: np.ndarray, val_data) -> list[float]:
    """Validation accuracy with statistics recomputed on each of ``SAMPLES`` images."""
    accuracies = []
    for count in SAMPLES:
        sample = np.random.default_rng(0).permutation(len(images))[:count]
        precise_bn.recompute_statistics(model, images[np.sort(sample)])
        accuracies.append(training.evaluate(model, val_data)["accuracy"])
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bn-aug-adamw")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=1, help="train seeds 0 .. N-1 of each")
    parser.add_argument("--learning-rate", type=float, help="instead of the preset's")
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    config = presets.get(args.preset).config.replace(epochs=args.epochs, precise_bn=False)
    if args.learning_rate:
        config = config.replace(learning_rate=args.learning_rate)
    if not config.batch_norm:
        parser.error(f"preset {args.preset} has no batch norm")
    x, y = data.load_train(args.data_dir)
    train_idx, val_idx = data.split_indices(y, seed=0)
    train_idx = data.subsample(train_idx, y, args.images, seed=0)
    train_data, val_data = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    results = {
        (layer.__name__, seed): run(config.replace(seed=seed), layer, train_data, val_data)
        for seed in range(args.seeds)
        for layer in (keras.layers.BatchNormalization, FusedBatchNormalization)
    }
    print(f"\npreset {args.preset} (learning rate {config.learning_rate:.2g}), {args.epochs} "
          f"epochs on {args.images} images, validated on {len(val_idx)} images of the training "
          f"set (accuracies after the last epoch)\n")
    print("| batch norm | seed | train accuracy | validation accuracy | median s/epoch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (name, seed), (history, _) in results.items():
        print(f"| {name} | {seed} | {100 * history['accuracy'][-1]:.2f}% | "
              f"{100 * history['val_accuracy'][-1]:.2f}% | "
              f"{statistics.median(history['seconds']):.1f} |")
    print("\n| seed | validation accuracy: moving statistics | "
          + " | ".join(f"recomputed on {min(count, len(train_idx)):,}" for count in SAMPLES)
          + " |")
    print("| ---: | ---: |" + " ---: |" * len(SAMPLES))
    for (name, seed), (history, model) in results.items():
        if name == FusedBatchNormalization.__name__:
            accuracies = recomputed(model, train_data[0], val_data)
            print(f"| {seed} | {100 * history['val_accuracy'][-1]:.2f}% | "
                  + " | ".join(f"{100 * a:.2f}%" for a in accuracies) + " |")


if __name__ == "__main__":
    main()
