"""Small costs inside a trial, side by side in one run: augmentation, XLA, a checkpoint.

Everything uses the configuration of ``--preset`` (default ``bn-aug-adamw``, the first trial
of a new study) and the project's own functions:

* augmentation: ``training.augment_batch`` on one batch of uint8 images, traced as a
  ``tf.function`` (as ``tf.data`` traces it in the pipeline), against one training step of
  ``training.compiled_model`` (``train_on_batch``) on the same batch; the two alternate, and
  the table gives the median milliseconds over ``--steps`` rounds and their ratio;
* XLA: one epoch of ``--images`` images (``training.make_dataset`` as ``training.train``
  builds it) with the model as the project compiles it (``jit_compile`` resolves to False
  on a CPU) against the same model with ``jit_compile=True``; a first epoch (tracing, and
  XLA's compilation) for each, then ``--rounds`` rounds alternating the two; the median epoch
  in wall and CPU time (all of this process's threads, which contention disturbs less) and
  the ratios;
* checkpoint: after those epochs, the project's model with its optimizer state as a trial
  checkpoints it: its size, and the median seconds over ``--rounds`` to serialise it
  (``training.model_to_bytes``), to write it to a new SQLite study database opened as a
  worker opens it (``storage.open_storage``) through ``CheckpointStore.save``, to read it
  back (``CheckpointStore.load``) and to rebuild the model (``training.model_from_bytes``).

The machine is shared and its speed changes from hour to hour: read the ratios; absolute
times compare only within one run.

Usage: python benchmarks/micro.py [--images 5000] [--rounds 3] [--steps 30]
       [--batch-size 128] [--preset bn-aug-adamw] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import optuna
import tensorflow as tf

from cifar_search import data, presets, storage, training
from cifar_search.checkpoints import CheckpointStore, config_hash
from cifar_search.config import TrainConfig


def machine() -> str:
    """CPU model, cores and load average, for the header."""
    info = Path("/proc/cpuinfo").read_text()
    found = re.search(r"model name\s*:\s*(.*)", info)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    clock = f" at {float(mhz.group(1)) / 1000:.2f} GHz" if mhz else ""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{found.group(1).strip() if found else 'unknown CPU'}, {os.cpu_count()} cores"
            f"{clock}; load average {load} (1, 5, 15 min)")


def seconds(run: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Wall seconds of ``run(*args, **kwargs)`` (TensorFlow's eager ops run synchronously)."""
    start = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - start


def augmentation(config: TrainConfig, x: np.ndarray, y: np.ndarray, steps: int,
                 ) -> tuple[list[float], list[float]]:
    """Seconds of augmenting one batch and of one training step on it, alternating."""
    model = training.compiled_model(config, len(x))
    augment = tf.function(lambda images, seed: training.augment_batch(
        images, seed, shift=config.shift, flip=config.flip, cutout=config.cutout))
    images, labels = tf.constant(x), tf.constant(data.to_one_hot(y))
    augmented = augment(images, tf.constant([0, 0], tf.int64))  # Trace both first.
    model.train_on_batch(augmented, labels)
    augment_s, step_s = [], []
    for step in range(steps):
        augment_s.append(seconds(augment, images, tf.constant([step, 1], tf.int64)))
        step_s.append(seconds(model.train_on_batch, augmented, labels))
    return augment_s, step_s


def epochs(config: TrainConfig, x: np.ndarray, y: np.ndarray, rounds: int):
    """The project's model and, per variant (no XLA, XLA): first epoch, wall and CPU seconds."""
    models = {"jit_compile=False (the project's)": training.compiled_model(config, len(x)),
              "jit_compile=True (XLA)": training.compiled_model(config, len(x))}
    project, xla = models.values()
    resolved = project.jit_compile
    xla.jit_compile = True  # Before the first fit, which builds the train function.
    dataset = training.make_dataset(
        x, y, config.batch_size, shuffle=True, seed=config.seed,
        shift=config.shift if config.augment else 0.0, flip=config.flip and config.augment,
        cutout=config.cutout if config.augment else 0)
    fit = {"epochs": 1, "verbose": 0, "shuffle": False}
    first = {name: seconds(model.fit, dataset, **fit) for name, model in models.items()}
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            cpu_start = time.process_time()
            wall[name].append(seconds(model.fit, dataset, **fit))
            cpu[name].append(time.process_time() - cpu_start)
    return project, resolved, first, wall, cpu


def checkpoint(model, config: TrainConfig, rounds: int) -> tuple[int, dict[str, list[float]]]:
    """Payload size and seconds of each checkpoint operation, through the project's store."""
    times: dict[str, list[float]] = {"serialise (model_to_bytes)": [],
                                     "write to SQLite (CheckpointStore.save)": [],
                                     "read from SQLite (CheckpointStore.load)": [],
                                     "rebuild the model (model_from_bytes)": []}
    serialise, write, read, rebuild = times.values()
    tag = config_hash(config.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        stored = storage.open_storage(f"sqlite:///{Path(tmp) / 'micro.db'}", create=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(storage=stored, study_name="micro")
        with warnings.catch_warnings():  # "Heartbeat ... used with Study.optimize": no need.
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()  # A RUNNING trial: the store writes only for one.
        store = CheckpointStore(stored.engine)
        for epoch in range(1, rounds + 1):
            start = time.perf_counter()
            payload = training.model_to_bytes(model)
            serialise.append(time.perf_counter() - start)
            start = time.perf_counter()
            written = store.save(trial._trial_id, study._study_id, tag, epoch, payload)
            write.append(time.perf_counter() - start)
            assert written, "the checkpoint was not written"
            start = time.perf_counter()
            saved = store.load(trial._trial_id)
            read.append(time.perf_counter() - start)
            assert saved is not None and saved.payload == payload
            start = time.perf_counter()
            restored = training.model_from_bytes(saved.payload)
            rebuild.append(time.perf_counter() - start)
        assert all(np.array_equal(a, b) for a, b in
                   zip(model.get_weights(), restored.get_weights(), strict=True))
        stored.engine.dispose()
    return len(payload), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="images of the epochs")
    parser.add_argument("--rounds", type=int, default=3, help="epochs and checkpoints")
    parser.add_argument("--steps", type=int, default=30, help="augmentations / train steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preset", default=presets.DEFAULTS["variants"],
                        choices=sorted(presets.PRESETS))
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    config = presets.get(args.preset).config.replace(batch_size=args.batch_size)
    x, y = data.load_train(args.data_dir)
    x, y = x[: args.images], y[: args.images]
    print(f"`{' '.join(['python', 'benchmarks/micro.py', *sys.argv[1:]])}`")
    print(f"\n{machine()}; TensorFlow {tf.__version__}; preset {args.preset}: "
          f"{config.describe()}\n")

    augment_s, step_s = augmentation(config, x[: args.batch_size], y[: args.batch_size],
                                     args.steps)
    augment_ms, step_ms = (1000 * statistics.median(t) for t in (augment_s, step_s))
    print(f"One batch of {args.batch_size}, median of {args.steps} rounds:\n")
    print("| operation | ms | ratio to the training step |")
    print("| --- | ---: | ---: |")
    print(f"| `augment_batch` (shift {config.shift:.2f}, flip {config.flip}, "
          f"cutout {config.cutout}) | {augment_ms:.1f} | {augment_ms / step_ms:.3f} |")
    print(f"| one training step (`train_on_batch`) | {step_ms:.1f} | 1.000 |")

    model, resolved, first, wall, cpu = epochs(config, x, y, args.rounds)
    base = next(iter(wall))
    print(f"\nOne epoch of {len(x)} images (the project's compile resolves jit_compile to "
          f"{resolved}); median of {args.rounds} rounds after a first epoch:\n")
    print("| compile | first epoch (s) | epoch (s) | ratio | epoch CPU (s) | CPU ratio "
          "| ratio round by round |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in wall:
        by_round = ", ".join(f"{a / b:.2f}" for a, b in zip(wall[name], wall[base]))
        print(f"| {name} | {first[name]:.1f} | {statistics.median(wall[name]):.2f} | "
              f"{statistics.median(wall[name]) / statistics.median(wall[base]):.2f} | "
              f"{statistics.median(cpu[name]):.1f} | "
              f"{statistics.median(cpu[name]) / statistics.median(cpu[base]):.2f} | "
              f"{by_round} |")

    size, times = checkpoint(model, config, args.rounds)
    print(f"\nA checkpoint of the model above with its {type(model.optimizer).__name__} state: "
          f"{size / 1e6:.1f} MB; median of {args.rounds} rounds:\n")
    print("| step | seconds |")
    print("| --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
