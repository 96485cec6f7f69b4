"""Where batch norm's cost sits in a training step of the CNN, side by side in one run.

Every variant is ``build_cnn`` compiled with Adam and trained with ``train_on_batch`` on one
fixed batch of real images (no input pipeline, so only the step itself is timed); rounds
alternate the variants, ``--steps`` steps each, and the table gives the median step in wall
and CPU time (all of this process's threads) and both as ratios to the plain model:

* batch norm at one position only (``conv1``, ``conv2``, or the two Dense layers), with the
  project's layer (:mod:`cifar_search.layers`: TensorFlow's fused kernel on Conv2D outputs,
  Keras' ops on Dense outputs);
* batch norm everywhere, with the project's layer and with ``keras.layers.BatchNormalization``;
* the plain model and batch norm everywhere (Keras' layer) compiled with XLA
  (``jit_compile=True``), which fuses batch norm's element-wise work but brings its own
  convolutions.

Usage: python benchmarks/batch_norm_cost.py [--rounds 6] [--steps 10] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from cifar_search import data
from cifar_search.model import build_cnn

POSITIONS = ("conv1", "conv2", "dense1", "dense2")


def only_at(*names: str) -> type[keras.layers.Layer]:
    """The project's batch-norm layer where ``names`` say, nothing (identity) elsewhere."""
    from cifar_search.layers import FusedBatchNormalization

    def layer(name: str) -> keras.layers.Layer:
        if name.removesuffix("_bn") in names:
            return FusedBatchNormalization(name=name)
        return keras.layers.Identity(name=name)

    return layer  # type: ignore[return-value]  # build_cnn only calls it with a name.


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
        "everywhere (Keras' layer)": compiled(
            build_cnn(batch_norm=True, batch_norm_layer=keras.layers.BatchNormalization)),
        "plain, XLA": compiled(build_cnn(), jit=True),
        "everywhere (Keras' layer), XLA": compiled(
            build_cnn(batch_norm=True, batch_norm_layer=keras.layers.BatchNormalization),
            jit=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
