"""What tf.data's autotuner costs at epoch boundaries: one multi-epoch ``training.train`` with
the project's datasets as they are (autotuning off) and one with autotuning switched back on,
alternating, on the same images.

For each run it prints the seconds from the first epoch's start to ``fit`` returning, the
time spent in training and validation batches, and the gaps outside them: from the last
training batch of one epoch to the first of the next, and from the last epoch's end to
``fit`` returning. With autotuning on (TensorFlow 2.21 here), the gaps were seconds long.

Usage: python benchmarks/epoch_boundaries.py [--images 20000] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import tensorflow as tf

from cifar_search import data, training
from cifar_search.config import TrainConfig


class Clock(keras.callbacks.Callback):
    """Times the batches; what is left of ``fit``'s time is the boundaries."""

    def __init__(self) -> None:
        super().__init__()
        self.in_batches = 0.0
        self.gaps: list[float] = []
        self._mark = 0.0

    def on_train_begin(self, logs=None) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None) -> None:
        if batch == 0:
            self.gaps.append(time.perf_counter() - self._mark)
        self._mark = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.in_batches += time.perf_counter() - self._mark
        self._mark = time.perf_counter()

    def on_test_begin(self, logs=None) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None) -> None:
        self.in_batches += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._mark = time.perf_counter()


def run(autotune: bool, config: TrainConfig, train_data, val_data) -> tuple[float, Clock]:
    make_dataset = training.make_dataset

    def with_autotune(*args, **kwargs) -> tf.data.Dataset:
        options = tf.data.Options()
        options.autotune.enabled = True
        return make_dataset(*args, **kwargs).with_options(options)

    clock = Clock()
    training.make_dataset = with_autotune if autotune else make_dataset
    try:
        start = time.perf_counter()
        training.train(config, train_data, val_data, callbacks=[clock])
        clock.gaps.append(time.perf_counter() - clock._mark)  # Last epoch end -> returned.
        return time.perf_counter() - start, clock
    finally:
        training.make_dataset = make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    x, y = data.load_train(args.data_dir)
    val = args.images // 4
    train_data, val_data = (x[: args.images], y[: args.images]), (x[-val:], y[-val:])
    config = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=128,
                         epochs=args.epochs)
    print(f"{args.images} training + {val} validation images, {args.epochs} epochs, "
          f"TensorFlow {tf.__version__}\n")
    print("| round | tf.data autotuning | fit seconds | in batches | gaps (s): epoch starts, "
          "then the return |")
    print("| ---: | --- | ---: | ---: | --- |")
    for round_ in range(args.rounds):
        for autotune in (False, True):
            seconds, clock = run(autotune, config, train_data, val_data)
            gaps = ", ".join(f"{gap:.2f}" for gap in clock.gaps)
            print(f"| {round_} | {'on' if autotune else 'off (the default)'} | {seconds:.1f} | "
                  f"{clock.in_batches:.1f} | {gaps} |", flush=True)


if __name__ == "__main__":
    main()
