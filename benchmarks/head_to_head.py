"""Head to head at equal wall-clock budgets: cifar-search from a cold start against plain
Optuna, random search and KerasTuner Hyperband, on the same 40K/10K split.

Each arm runs alone, one after the other, in a process of its own, for the same budget:

* ``cifar-search``: the product, from a cold start (``--no-preset --no-baseline``);
* ``optuna-defaults``: ``TPESampler()`` and ``MedianPruner()`` with Optuna's defaults, on
  the same search space and training code (:class:`cifar_search.objective.Objective`, batch
  norm's recomputed statistics included, without cifar-search's screening);
* ``random``: ``RandomSampler()``, no pruning, the same space and code;
* ``keras-tuner``: ``keras_tuner.Hyperband`` as its documentation shows it (a
  ``HyperModel`` whose ``build`` chooses the layers and optimizer and whose ``fit`` the
  batch size and augmentation), on as much of the space as it can express (no learning-rate
  schedules: Hyperband decides the epochs).

Every arm prints one line per epoch with its validation accuracy; this script stamps each
line with the time since the arm started, stops the arm at the budget (SIGINT, then SIGKILL
a minute later), and prints the best validation accuracy reached by each checkpoint minute
and the epochs trained. Needs the ``bench`` extra (``pip install -e '.[bench]'``).

    python benchmarks/head_to_head.py --seed 0 --out logs/h2h

A variant of the product is measured as the cifar-search arm alone with its flags, e.g.
``--arms cifar-search --cifar-search-flags '--random-trials 4' --out logs/h2h-random4``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cifar_search.config import StudyConfig

ARMS = ("cifar-search", "optuna-defaults", "random", "keras-tuner")
EPOCH_LINE = re.compile(r"val_accuracy (\d\.\d+)")
MAX_EPOCHS = 15
CLI = str(Path(sys.executable).with_name("cifar-search"))


def arm_command(arm: str, args: argparse.Namespace, out: Path) -> list[str]:
    sizes = [f"--{name.replace('_', '-')}={value}" for name, value in (
        ("train_size", args.train_size), ("val_size", args.val_size),
        ("data_dir", args.data_dir)) if value]
    if arm == "cifar-search":
        return [CLI, "search", "--study", f"cold-start-{args.seed}", "--storage",
                f"sqlite:///{out.resolve()}/cifar-search-{args.seed}.db", "--no-preset",
                "--no-baseline", f"--max-epochs={MAX_EPOCHS}", "--n-trials=100000",
                f"--sampler-seed={args.seed}", *sizes, *shlex.split(args.cifar_search_flags)]
    return [sys.executable, __file__, "--run-arm", arm, f"--seed={args.seed}",
            f"--out={out}", *sizes]


def run_arm(arm: str, args: argparse.Namespace, out: Path) -> dict:
    """Run ``arm`` for the budget; its epochs as (seconds since start, val accuracy)."""
    budget = 60 * max(args.checkpoints)
    points: list[tuple[float, float]] = []
    log = (out / f"{arm}-{args.seed}.log").open("w", buffering=1)  # Line by line.
    start = time.monotonic()
    proc = subprocess.Popen(arm_command(arm, args, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - start
            log.write(f"{now:8.1f} {line}")
            if (match := EPOCH_LINE.search(line)) and now <= budget:
                points.append((now, float(match.group(1))))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join()
    log.close()
    name = f"{arm} {args.cifar_search_flags}" if arm == "cifar-search" else arm
    return {"arm": name.strip(), "seed": args.seed, "budget_minutes": max(args.checkpoints),
            "exit_code": proc.returncode, "epochs": len(points), "points": points}


def best_by(points: list[list[float]], minutes: float) -> float | None:
    reached = [acc for seconds, acc in points if seconds <= 60 * minutes]
    return max(reached) if reached else None


def table(results: list[dict], checkpoints: list[float]) -> str:
    lines = ["| minutes | " + " | ".join(r["arm"] for r in results) + " |",
             "| ---: |" + " ---: |" * len(results)]
    for minutes in checkpoints:
        cells = [best_by(r["points"], minutes) for r in results]
        lines.append(f"| {minutes:g} | " + " | ".join(
            "-" if c is None else f"{100 * c:.2f}%" for c in cells) + " |")
    lines.append("| epochs trained | " + " | ".join(str(r["epochs"]) for r in results) + " |")
    return "\n".join(lines)


def _data(args: argparse.Namespace):
    from cifar_search.config import StudyConfig
    from cifar_search.search import load_train_set, split

    images, labels, _ = load_train_set(args.data_dir)
    config = StudyConfig(train_size=args.train_size or None, val_size=args.val_size or None)
    train_idx, val_idx = split(labels, config)
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def arm_config(arm: str) -> StudyConfig:
    """The study settings of the ``optuna-defaults`` and ``random`` arms' Objective.

    Training seeds as in the cifar-search arm's study (its --seed, 0); only the samplers'
    seeds change between repetitions. Its pruner is not ``screen``: the Objective would then
    screen each trial itself, which is cifar-search's pruning, not these arms'.
    """
    from cifar_search.config import StudyConfig

    return StudyConfig(max_epochs=MAX_EPOCHS,
                       pruner="median" if arm == "optuna-defaults" else "none")


def _optuna_arm(arm: str, args: argparse.Namespace) -> None:
    import optuna

    from cifar_search.objective import NonFiniteLossError, Objective

    train, val = _data(args)
    if arm == "optuna-defaults":
        sampler, pruner = optuna.samplers.TPESampler(seed=args.seed), optuna.pruners.MedianPruner()
    else:
        sampler, pruner = optuna.samplers.RandomSampler(seed=args.seed), optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    objective = Objective(train, val, arm_config(arm), log=print)
    study.optimize(lambda trial: objective(trial, trial._trial_id, trial.number),
                   catch=(NonFiniteLossError,))


def _keras_tuner_arm(args: argparse.Namespace, out: Path) -> None:
    import keras
    import keras_tuner as kt

    from cifar_search import training
    from cifar_search.config import OPTIMIZERS
    from cifar_search.model import build_cnn

    train, val = _data(args)

    class CNN(kt.HyperModel):
        def build(self, hp: kt.HyperParameters) -> keras.Model:
            model = build_cnn(batch_norm=hp.Boolean("batch_norm"),
                              dropout_conv=hp.Float("dropout_conv", 0.0, 0.3),
                              dropout_dense=hp.Float("dropout_dense", 0.0, 0.6))
            rate = hp.Float("learning_rate", 1e-4, 3e-2, sampling="log")
            optimizer = {
                "sgd": lambda: keras.optimizers.SGD(rate, momentum=0.9, nesterov=True),
                "adam": lambda: keras.optimizers.Adam(rate),
                "adamw": lambda: keras.optimizers.AdamW(
                    rate, weight_decay=hp.Float("weight_decay", 1e-4, 3e-2, sampling="log")),
                "rmsprop": lambda: keras.optimizers.RMSprop(rate),
            }[hp.Choice("optimizer", list(OPTIMIZERS))]()
            model.compile(optimizer=optimizer, metrics=["accuracy"],
                          loss=keras.losses.CategoricalCrossentropy(
                              label_smoothing=hp.Choice("label_smoothing", [0.0, 0.1])))
            return model

        def fit(self, hp: kt.HyperParameters, model: keras.Model, x, y, validation_data,
                **kwargs):
            augment = hp.Boolean("augment")
            data = training.make_dataset(
                x, y, hp.Choice("batch_size", [64, 128, 256]), shuffle=True, seed=args.seed,
                shift=hp.Float("shift", 0.03, 0.2) if augment else 0.0, flip=augment)
            return model.fit(data, validation_data=training.make_dataset(
                *validation_data, training.EVAL_BATCH_SIZE), **kwargs)

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            print(f"epoch {epoch + 1}: val_accuracy {(logs or {})['val_accuracy']:.4f}",
                  flush=True)

    tuner = kt.Hyperband(CNN(), objective="val_accuracy", max_epochs=MAX_EPOCHS, factor=3,
                         seed=args.seed, directory=str(out / f"keras-tuner-{args.seed}"),
                         project_name="cifar10", overwrite=True)
    tuner.search(*train, validation_data=val, callbacks=[EpochLine()], verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--checkpoints", nargs="+", type=float, default=[5, 10, 20, 30],
                        metavar="MINUTES", help="report the best by these minutes; the "
                        "last is each arm's budget")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' and tuner's seed "
                        "(the split is always seed 0's)")
    parser.add_argument("--train-size", type=int, default=0, help="0: all 40K")
    parser.add_argument("--val-size", type=int, default=0, help="0: all 10K")
    parser.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    parser.add_argument("--out", default="logs/h2h")
    parser.add_argument("--cifar-search-flags", default="", metavar="FLAGS",
                        help="more flags for the cifar-search arm's search command, e.g. "
                        "'--random-trials 4' (named with the arm in the table)")
    parser.add_argument("--run-arm", choices=ARMS[1:], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if not args.run_arm and "cifar-search" in args.arms and (
            out / f"cifar-search-{args.seed}.db").exists():
        parser.error(f"{out} holds a cifar-search study of seed {args.seed}, which the arm "
                     f"would resume rather than start cold; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    if args.run_arm == "keras-tuner":
        _keras_tuner_arm(args, out)
        return
    if args.run_arm:
        _optuna_arm(args.run_arm, args)
        return
    results = []
    for arm in args.arms:
        results.append(run_arm(arm, args, out))
        print(f"{arm}: {results[-1]['epochs']} epochs, best "
              f"{best_by(results[-1]['points'], max(args.checkpoints))}", flush=True)
        # After each arm: a run stopped midway keeps the arms it finished.
        (out / f"results-{args.seed}.json").write_text(json.dumps(results, indent=1))
    print(f"seed {args.seed}, sizes {args.train_size or 40000}/{args.val_size or 10000}, "
          f"arms one after the other:")
    print(table(results, args.checkpoints))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # An arm stopped at its budget.
        sys.exit(130)
