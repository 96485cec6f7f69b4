"""Does pruning pay? The same search with no pruner, the median pruner and Hyperband.

Each pruner gets its own study with the same trial count, split seed and sampler seed, run
one after the other by the real CLI; the table gives total epochs trained, wall time and the
best validation accuracy. Extra arguments go to ``cifar-search search`` (e.g. a smoke run:
``--train-size 1000 --val-size 500 --max-epochs 2 --n-trials 3``).

Usage: python benchmarks/pruning.py [--out logs/pruning] [search flags...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import optuna

PRUNERS = ("none", "median", "hyperband")


def run(out: Path, pruner: str, flags: list[str]) -> tuple[float, optuna.Study]:
    """Run one study to its end; return its wall time and the study."""
    url = f"sqlite:///{out / f'pruning-{pruner}.db'}"
    command = [sys.executable, "-m", "cifar_search", "search", "--study", f"pruning-{pruner}",
               "--storage", url, "--pruner", pruner, "--sampler-seed", "0", *flags]
    start = time.perf_counter()
    with (out / f"pruning-{pruner}.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start, optuna.load_study(study_name=f"pruning-{pruner}",
                                                          storage=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="logs/pruning")
    args, flags = parser.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pruner in PRUNERS:
        seconds, study = run(out, pruner, flags)
        trials = study.get_trials(deepcopy=False)
        epochs = sum(len(t.user_attrs.get("history", {}).get("val_accuracy", [])) for t in trials)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        rows.append((pruner, len(trials), pruned, epochs, seconds, study.best_value))
    base_epochs, base_best = rows[0][3], rows[0][5]
    print("| pruner | trials | pruned | epochs trained | epochs saved | wall time (s) | "
          "best val acc | vs none (points) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pruner, n, pruned, epochs, seconds, best in rows:
        print(f"| {pruner} | {n} | {pruned} | {epochs} | {100 * (1 - epochs / base_epochs):.0f}% "
              f"| {seconds:.0f} | {best:.4f} | {100 * (best - base_best):+.2f} |")


if __name__ == "__main__":
    main()
