"""Wall time from ``cifar-search search`` start until the study first holds a trial epoch with
at least a target validation accuracy (issue: time to accuracy).

Starts the real CLI with default settings (full 40K/10K split unless flags say otherwise) on a
fresh SQLite study, watches the study's per-epoch reports, and stops the worker as soon as one
reaches the target (or at --limit seconds) with SIGTERM, which the search handles like Ctrl-C
(a background job may have SIGINT ignored). Extra arguments go to ``search``. With
``--study NAME`` it instead reads an existing study: for each trial, its first epoch at the
target, the trial's own seconds to it, and the seconds since the study's first trial started.

Usage: python benchmarks/time_to_accuracy.py [--target 0.70] [--limit 900] [search flags...]
       python benchmarks/time_to_accuracy.py --study NAME [--storage URL] [--target 0.70]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from cifar_search.screening import SCREEN_ATTR
from cifar_search.storage import default_url


def first_epoch_at(study: optuna.Study, target: float) -> tuple[int, int, float] | None:
    """(trial, epoch, accuracy) of the first reported epoch at or above ``target``, if any."""
    for trial in study.get_trials(deepcopy=False):
        for epoch, value in sorted(trial.intermediate_values.items()):
            if value >= target:
                return trial.number, epoch, value
    return None


def print_study(study: optuna.Study, target: float) -> None:
    """Per trial of a finished study: when it first reached ``target``, from its own records."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start]
    start = min(t.datetime_start for t in trials)
    print("| trial | first epoch at target | val acc then | trial's own seconds to it | "
          "seconds since study start |\n| ---: | ---: | ---: | ---: | ---: |")
    for trial in trials:
        history = trial.user_attrs.get("history", {})
        val = history.get("val_accuracy", [])
        epoch = next((i for i, value in enumerate(val) if value >= target), None)
        if epoch is not None:
            screen = trial.user_attrs.get(SCREEN_ATTR, {}).get("seconds", [])
            own = sum(screen) + sum(history["seconds"][: epoch + 1])
            since = (trial.datetime_start - start).total_seconds() + own
            print(f"| {trial.number} | {epoch + 1} | {val[epoch]:.2%} | {own:.0f} | {since:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.70)
    parser.add_argument("--limit", type=float, default=900.0, help="give up after this long")
    parser.add_argument("--study", help="read this existing study instead of starting one")
    parser.add_argument("--storage", help="its storage (default: the study's SQLite file)")
    args, flags = parser.parse_known_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.study:
        print_study(optuna.load_study(study_name=args.study,
                                      storage=args.storage or default_url(args.study)),
                    args.target)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 't2a.db'}"
        log = Path(tmp) / "search.log"
        start = time.perf_counter()
        with log.open("w") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "cifar_search", "search", "--study", "t2a", "--storage",
                 url, *flags], stdout=out, stderr=subprocess.STDOUT)
        hit = None
        while hit is None and worker.poll() is None and time.perf_counter() - start < args.limit:
            time.sleep(1.0)
            try:
                hit = first_epoch_at(optuna.load_study(study_name="t2a", storage=url),
                                     args.target)
            except KeyError:  # The worker has not created the study yet.
                continue
        elapsed = time.perf_counter() - start
        worker.terminate()
        worker.wait(60)
        print(log.read_text(), end="")
    if hit is None:
        print(f"no epoch reached {args.target:.0%} validation accuracy in {elapsed:.0f} s")
        sys.exit(1)
    trial, epoch, value = hit
    print(f"| target | trial | epoch | val acc | seconds since search start |\n"
          f"| ---: | ---: | ---: | ---: | ---: |\n"
          f"| {args.target:.0%} | {trial} | {epoch} | {value:.2%} | {elapsed:.0f} |")


if __name__ == "__main__":
    main()
