"""Keras' batch norm against the fused one in a real short training run: same seed, same data.

Trains the ``bn-aug-adamw`` preset (or another) from the same seed once with
``keras.layers.BatchNormalization`` and once with
:class:`cifar_search.layers.FusedBatchNormalization` on ``--images`` training images,
validates both on the project's 10,000-image validation split (``data.split_indices``,
seed 0), and prints each run's accuracies and seconds per epoch. The two compute the same
mathematics, so the accuracies should be alike (float round-off differs, so not identical).

Usage: python benchmarks/bn_accuracy.py [--preset bn-aug-adamw] [--epochs 3] [--images 10000]
       [--seeds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from cifar_search import data, presets, training
from cifar_search.layers import FusedBatchNormalization
from cifar_search.model import build_cnn


def run(config, layer, train_data, val_data) -> dict[str, list[float]]:
    """The per-epoch history (curves and seconds) of one training run with ``layer``."""
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
    return recorder.history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bn-aug-adamw")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=1, help="train seeds 0 .. N-1 of each")
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    config = presets.get(args.preset).config.replace(epochs=args.epochs)
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
    print(f"\npreset {args.preset}, {args.epochs} epochs on {args.images} images, validated "
          f"on {len(val_idx)} images of the training set (accuracies after the last epoch)\n")
    print("| batch norm | seed | train accuracy | validation accuracy | median s/epoch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (name, seed), history in results.items():
        print(f"| {name} | {seed} | {100 * history['accuracy'][-1]:.2f}% | "
              f"{100 * history['val_accuracy'][-1]:.2f}% | "
              f"{statistics.median(history['seconds']):.1f} |")


if __name__ == "__main__":
    main()
