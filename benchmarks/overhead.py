"""Seconds each trial of a study spent outside its training epochs (issue: no waste per trial).

A trial's wall time minus the sum of its epoch times (each epoch time includes validation)
is what the worker spent on sampling, building and compiling the model, storage writes and
checkpoints. Also prints the time between one trial's end and the next one's start, apart
where the worker process changed (a new trial process starting its TensorFlow runtime),
and the epochs the study trained against its budget (what pruning saved).

Usage: python benchmarks/overhead.py --study NAME [--storage URL]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import optuna

from cifar_search.screening import seconds_trained
from cifar_search.storage import default_url


def overheads(study: optuna.Study) -> list[tuple[int, str, int, float, float]]:
    """(trial, state, epochs, epoch seconds, seconds outside epochs) of each finished trial."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = seconds_trained(trial.user_attrs)  # A screening run's epochs included.
        if trial.duration is None or not seconds:
            continue
        rows.append((trial.number, trial.state.name, len(seconds), sum(seconds),
                     trial.duration.total_seconds() - sum(seconds)))
    return rows


def gaps(study: optuna.Study) -> tuple[list[float], list[float]]:
    """Seconds from each trial's end to the next trial's start: same process, new process."""
    trials = sorted((t for t in study.get_trials(deepcopy=False) if t.datetime_complete),
                    key=lambda t: t.datetime_start)
    same, changed = [], []
    for before, after in itertools.pairwise(trials):
        gap = (after.datetime_start - before.datetime_complete).total_seconds()
        if gap >= 0:  # Overlapping trials ran on different workers at once.
            new = before.user_attrs.get("worker") != after.user_attrs.get("worker")
            (changed if new else same).append(gap)
    return same, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage")
    args = parser.parse_args()
    study = optuna.load_study(study_name=args.study,
                              storage=args.storage or default_url(args.study))
    rows = overheads(study)
    print("| trial | state | epochs | seconds in epochs | seconds outside epochs |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for number, state, epochs, inside, outside in rows:
        print(f"| {number} | {state} | {epochs} | {inside:.1f} | {outside:.1f} |")
    outside = [row[4] for row in rows]
    total_inside, total_outside = sum(row[3] for row in rows), sum(outside)
    print(f"\nmedian overhead per trial: {statistics.median(outside):.1f} s "
          f"(max {max(outside):.1f} s) over {len(rows)} trials; {total_outside:.0f} s outside "
          f"epochs against {total_inside:.0f} s in them "
          f"({100 * total_outside / (total_inside + total_outside):.1f}% of the trials' time)")
    same, changed = gaps(study)
    if same or changed:
        print(f"between trials: median {statistics.median(same or [0]):.1f} s in the same "
              f"process ({len(same)} gaps); median {statistics.median(changed or [0]):.1f} s "
              f"where a new worker process took over ({len(changed)} gaps)")
    epochs = sum(row[2] for row in rows)
    budget = len(rows) * study.user_attrs["config"]["max_epochs"]
    print(f"epochs trained: {epochs} of the {budget} the same trials would run unpruned "
          f"({100 * (1 - epochs / budget):.0f}% saved)")


if __name__ == "__main__":
    main()
