"""Wall time from ``cifar-search search`` start until the study first holds a trial epoch with
at least a target validation accuracy (issue: time to accuracy).

Starts the real CLI with default settings (full 40K/10K split unless flags say otherwise) on a
fresh SQLite study, watches the study's per-epoch reports, and stops the worker with Ctrl-C as
soon as one reaches the target (or at --limit seconds). Extra arguments go to ``search``.

Usage: python benchmarks/time_to_accuracy.py [--target 0.70] [--limit 900] [search flags...]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def first_epoch_at(study: optuna.Study, target: float) -> tuple[int, int, float] | None:
    """(trial, epoch, accuracy) of the first reported epoch at or above ``target``, if any."""
    for trial in study.get_trials(deepcopy=False):
        for epoch, value in sorted(trial.intermediate_values.items()):
            if value >= target:
                return trial.number, epoch, value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.70)
    parser.add_argument("--limit", type=float, default=900.0, help="give up after this long")
    args, flags = parser.parse_known_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
        worker.send_signal(signal.SIGINT)
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
