"""Using both cores: one worker with 2 threads against 2 workers with 1 thread each.

Both layouts run the same small search (same trial count and budget) in fresh studies, one
after the other, in rounds; the table gives trials per hour. Extra arguments go to the search.

Usage: python benchmarks/workers.py [--rounds 2] [--out logs/workers] [search flags...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_FLAGS = ["--n-trials", "6", "--max-epochs", "2", "--train-size", "10000",
                 "--val-size", "2000", "--pruner", "none", "--no-baseline"]
LAYOUTS = {
    "1 worker x 2 threads": ["search", "--threads", "2"],
    "2 workers x 1 thread": ["workers", "-k", "2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="logs/workers")
    args, flags = parser.parse_known_args()
    flags = flags or DEFAULT_FLAGS
    n_trials = int(flags[flags.index("--n-trials") + 1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for round_ in range(args.rounds):
        for i, (name, command) in enumerate(LAYOUTS.items()):
            study = f"layout{i}-round{round_}"
            url = f"sqlite:///{out / f'{study}-{time.time_ns()}.db'}"
            start = time.perf_counter()
            with (out / f"{study}.log").open("w") as log:
                subprocess.run([sys.executable, "-m", "cifar_search", *command, "--study", study,
                                "--storage", url, *flags], stdout=log,
                               stderr=subprocess.STDOUT, check=True)
            seconds[name].append(time.perf_counter() - start)
    print(f"search flags: {' '.join(flags)}; {args.rounds} rounds (median)\n")
    print("| layout | wall time (s) | trials per hour |")
    print("| --- | ---: | ---: |")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.0f} | {3600 * n_trials / median:.0f} |")


if __name__ == "__main__":
    main()
