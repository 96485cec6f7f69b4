"""Resident memory of one worker over consecutive trials (issue: flat memory).

Runs a search in this process on small slices and prints the worker's RSS when each trial
starts. Usage: python benchmarks/memory.py [--trials 20] [--train-size 2000]
"""

from __future__ import annotations

import argparse
import re
import tempfile

from cifar_search.search import run_search


def rss_mb() -> float:
    """This process's resident set size, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def rss_per_trial(trials: int, train_size: int, data_dir: str | None = None) -> list[float]:
    """RSS in MB at the start of each trial, then once more after the last one."""
    samples: list[float] = []

    def log(line: str) -> None:
        if " starts: " in line:
            samples.append(rss_mb())

    with tempfile.TemporaryDirectory() as tmp:
        run_search("memory", f"sqlite:///{tmp}/memory.db", n_trials=trials, data_dir=data_dir,
                   given={"train_size": train_size, "val_size": 500, "max_epochs": 1,
                          "pruner": "none"}, sampler_seed=0, log=log)
    samples.append(rss_mb())
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    samples = rss_per_trial(args.trials, args.train_size, args.data_dir)
    print("| trial | RSS at start (MB) |\n| ---: | ---: |")
    for i, mb in enumerate(samples[:-1]):
        print(f"| {i} | {mb:.0f} |")
    print(f"| end | {samples[-1]:.0f} |")
    print(f"growth after the second trial: {samples[-1] - samples[2]:+.0f} MB")


if __name__ == "__main__":
    main()
