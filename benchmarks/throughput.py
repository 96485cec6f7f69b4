"""Training throughput of cifar-search's pipeline against plain Keras, side by side.

Each round trains one epoch of every variant, in turn, on the same images; the table reports
the median over rounds, so a change in host load hits all variants alike. Variants:

* ``keras-numpy``: the seed notebook's way: float32 arrays scaled to [0, 1], ``model.fit``.
* ``cifar-search``: uint8 images in memory, gathered per shuffled batch in ``tf.data``.
* ``cifar-search+aug``: the same with the vectorised flip+shift batch augmentation.
* ``keras-layers+aug``: RandomFlip + RandomTranslation layers inside the model, numpy input.
* ``cifar-search+bn-keras``: the project's path with ``keras.layers.BatchNormalization``.
* ``cifar-search+bn-updating``: the same with the project's batch norm on TensorFlow's fused
  kernel (:mod:`cifar_search.layers`), updating its moving statistics every step (studies
  created before precise batch norm);
* ``cifar-search+bn``: a study's batch-norm epoch as it trains today: the fused layer leaves
  its moving statistics to precise batch norm (:mod:`cifar_search.precise_bn`), which
  recomputes them on 1,024 images at the end of the epoch (included);
  the three are printed as epoch-time ratios to ``cifar-search``.

Usage: python benchmarks/throughput.py [--images 10000] [--rounds 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

from cifar_search import data, training
from cifar_search.config import TrainConfig
from cifar_search.model import build_cnn
from cifar_search.precise_bn import PreciseBatchNorm

SHIFT = 0.1


def train_flops_per_image(model: keras.Model) -> float:
    """Multiply-adds of Conv2D/Dense layers x2 (forward), x3 for forward plus backward."""
    forward = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            forward += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.input.shape[-1] * layer.units
    return 3.0 * forward


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak of this machine's cores: cores x GHz x lanes x 2 (FMA) x 2 FMA units."""
    info = Path("/proc/cpuinfo").read_text()
    ghz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1)) / 1000
    flags = re.search(r"flags\s*:(.*)", info).group(1).split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = os.cpu_count() or 1
    peak = cores * ghz * lanes * 2 * 2
    return peak, f"{cores} cores x {ghz:.2f} GHz x {lanes} fp32 lanes x 2 (FMA) x 2 FMA units"


def variants(x, y, batch_size: int) -> dict[str, tuple[keras.Model, dict]]:
    """Compiled models and their ``fit`` arguments, one per variant."""
    config = TrainConfig(optimizer="adam", learning_rate=1e-3, batch_size=batch_size, epochs=1)
    one_hot = data.to_one_hot(y)
    plain = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 4, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    plain.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    layers_aug = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomTranslation(SHIFT, SHIFT), *plain.layers,
    ])
    layers_aug.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy",
                       metrics=["accuracy"])
    keras_bn = build_cnn(batch_norm=True, batch_norm_layer=keras.layers.BatchNormalization)
    keras_bn.compile(training.build_optimizer(config, -(-len(x) // batch_size)),
                     "categorical_crossentropy", metrics=["accuracy"])
    xf = x.astype("float32") / 255.0
    numpy_args = {"x": xf, "y": one_hot, "batch_size": batch_size}
    return {
        "keras-numpy": (plain, numpy_args),
        "cifar-search": (training.compiled_model(config, len(x)),
                         {"x": training.make_dataset(x, y, batch_size, shuffle=True)}),
        "cifar-search+aug": (training.compiled_model(config, len(x)),
                             {"x": training.make_dataset(x, y, batch_size, shuffle=True,
                                                         shift=SHIFT, flip=True)}),
        "keras-layers+aug": (layers_aug, numpy_args),
        "cifar-search+bn-keras": (keras_bn,
                                  {"x": training.make_dataset(x, y, batch_size, shuffle=True)}),
        "cifar-search+bn-updating": (
            training.compiled_model(config.replace(batch_norm=True, precise_bn=False), len(x)),
            {"x": training.make_dataset(x, y, batch_size, shuffle=True)}),
        "cifar-search+bn": (
            training.compiled_model(config.replace(batch_norm=True), len(x)),
            {"x": training.make_dataset(x, y, batch_size, shuffle=True),
             "callbacks": [PreciseBatchNorm.from_training_set(
                 x, training.steps_per_epoch(len(x), batch_size), config.seed)]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    x, y = data.load_train(args.data_dir)
    x, y = x[: args.images], y[: args.images]
    runs = variants(x, y, args.batch_size)
    for model, fit_args in runs.values():  # Warm-up: tracing and first-epoch costs.
        model.fit(epochs=1, verbose=0, shuffle=False, **fit_args)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in runs}  # All threads' CPU time.
    for _ in range(args.rounds):
        for name, (model, fit_args) in runs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            model.fit(epochs=1, verbose=0, shuffle=False, **fit_args)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)

    flops = train_flops_per_image(build_cnn())
    peak, how = cpu_peak_gflops()
    base = args.images / statistics.median(seconds["keras-numpy"])
    print(f"{args.images} images, batch {args.batch_size}, {args.rounds} rounds (median); "
          f"{flops / 1e6:.1f} MFLOP per training image; peak {peak:.0f} GFLOP/s ({how})\n")
    print("| variant | images/s | vs keras-numpy | GFLOP/s | % of peak |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in seconds.items():
        rate = args.images / statistics.median(times)
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} | {rate * flops / 1e9:.1f} | "
              f"{100 * rate * flops / 1e9 / peak:.1f} |")
    no_aug = args.images / statistics.median(seconds["cifar-search"])
    for name in ("cifar-search+aug", "keras-layers+aug"):
        rate = args.images / statistics.median(seconds[name])
        print(f"\naugmentation cost of {name}: {100 * (no_aug / rate - 1):+.0f}% epoch time "
              f"over cifar-search without augmentation", end="")
    # Under contention from other processes wall time swings; the CPU time the epoch used
    # (all of this process's threads) is steadier, so both ratios are printed.
    for name in ("cifar-search+bn-keras", "cifar-search+bn-updating", "cifar-search+bn"):
        ratio = statistics.median(seconds[name]) / statistics.median(seconds["cifar-search"])
        cpu = statistics.median(cpu_seconds[name]) / statistics.median(cpu_seconds["cifar-search"])
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(seconds[name], seconds["cifar-search"]))
        print(f"\nbatch-norm epoch of {name}: {ratio:.2f}x the cifar-search epoch without "
              f"batch norm (round by round: {rounds}); CPU time {cpu:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
