"""Do short runs rank configurations as full runs do? Evidence for judging trials early.

A pruner judges a trial at epoch E of a schedule that spans the whole budget (the learning
rate still high, the warm-up barely over), and that is why early judgements lose the best
trials (docs/PERFORMANCE.md, section 5). A short run whose schedule spans only E epochs ends
at a low learning rate, like a full run does. This script retrains every complete trial of an
unpruned study (``--pruner none``, so every trial's full curve is recorded) for ``--epochs``
epochs with its schedule fitted to that budget, on the study's own split, and compares three
rankings of the trials with the ranking by their full-budget result (best validation
accuracy): the full run's own validation accuracy at epoch E (what a pruner sees today), and
the short run's final validation accuracy. For each it prints Spearman's rank correlation and
how many of the full budget's top 3 are in its top 3 and top 5.

Each short run is one ``training.train`` in this process, in trial order; the results go to
``--out`` as JSON as they come, so a stopped run keeps what it has, and a later run with the
same ``--out`` (same study and epochs) retrains only the trials that file does not hold yet:
short runs can follow a study that is still running, across sessions.

``--precise-bn`` trains the short runs with batch-norm statistics recomputed before each
validation, as studies created since that setting do, for trials whose study did not.

Usage: python benchmarks/short_budgets.py --study pruning-none-15 \
           --storage sqlite:///studies/pruning-none-15.db [--epochs 3] [--out FILE] \
           [--precise-bn]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from cifar_search import data, ledger, storage, training
from cifar_search.config import TrainConfig
from cifar_search.search import split


@dataclasses.dataclass
class Trial:
    number: int
    full: float  # Best validation accuracy of the full-budget run.
    at_epoch: float  # The full run's validation accuracy at epoch E.
    short: float | None = None  # Final validation accuracy of the E-epoch run.
    short_seconds: float | None = None  # Its training time (epochs only).


def agreement(trials: list[Trial], key: str) -> str:
    full = np.array([t.full for t in trials])
    other = np.array([getattr(t, key) for t in trials])
    rho = spearmanr(full, other).statistic
    top = set(np.argsort(-full)[:3])
    in_top = [len(top & set(np.argsort(-other)[:k])) for k in (3, 5)]
    return f"Spearman {rho:+.2f}; full top 3 in its top 3: {in_top[0]}, in its top 5: {in_top[1]}"


def done_before(out: Path, study: str, epochs: int, precise_bn: bool) -> list[Trial]:
    """The short runs an earlier run wrote to ``out`` for this study, budget and statistics."""
    if not out.exists():
        return []
    earlier = json.loads(out.read_text())
    kind = earlier["study"], earlier["epochs"], earlier.get("precise_bn", False)
    if kind != (study, epochs, precise_bn):
        raise SystemExit(f"{out} holds short runs of {kind[0]!r} with {kind[1]} epochs, "
                         f"precise_bn {kind[2]}; give another --out")
    return [Trial(**t) for t in earlier["trials"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="logs/short-budgets.json")
    parser.add_argument("--precise-bn", action="store_true",
                        help="recompute batch-norm statistics before each validation "
                             "(cifar_search.precise_bn), even if the study did not")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    source = storage.load_study(args.study, storage.open_storage(args.storage))
    config = ledger.frozen_config(source)
    if config is None or config.pruner != "none":
        parser.error(f"{args.study!r} is not an unpruned cifar-search study (--pruner none)")
    images, labels = data.load_train(args.data_dir)
    train_idx, val_idx = split(labels, config)
    train_data = images[train_idx], labels[train_idx]
    val_data = images[val_idx], labels[val_idx]

    trials = done_before(Path(args.out), args.study, args.epochs, args.precise_bn)
    done = {t.number for t in trials}
    for frozen in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if frozen.number in done:
            continue
        curve = frozen.user_attrs["history"]["val_accuracy"]
        trial = Trial(frozen.number, max(curve), curve[args.epochs - 1])
        short = TrainConfig.from_dict(frozen.user_attrs["train_config"])
        short = short.replace(epochs=args.epochs, precise_bn=short.precise_bn or args.precise_bn)
        recorder = training.HistoryRecorder(f"trial {frozen.number}", args.epochs, print)
        training.train(short, train_data, val_data, callbacks=[recorder])
        trial.short = recorder.history["val_accuracy"][-1]
        trial.short_seconds = sum(recorder.history["seconds"])
        trials.append(trial)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(  # Read by benchmarks/pruning.py --short-runs.
            {"study": args.study, "epochs": args.epochs, "precise_bn": args.precise_bn,
             "trials": [dataclasses.asdict(t) for t in trials]}, indent=1))

    print(f"\n{args.study}: {len(trials)} complete trials, short runs of {args.epochs} epochs\n")
    print(f"| trial | full budget: best val acc | full run at epoch {args.epochs} | "
          f"{args.epochs}-epoch run |")
    print("| ---: | ---: | ---: | ---: |")
    for t in sorted(trials, key=lambda t: -t.full):
        print(f"| {t.number} | {t.full:.4f} | {t.at_epoch:.4f} | {t.short:.4f} |")
    print(f"\nfull run at epoch {args.epochs} vs full budget: {agreement(trials, 'at_epoch')}")
    print(f"{args.epochs}-epoch run vs full budget: {agreement(trials, 'short')}")


if __name__ == "__main__":
    main()
