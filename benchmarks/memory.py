"""Resident memory of one worker over consecutive trials (issue: flat memory).

Runs ``cifar-search search`` on small slices (1 epoch per trial, no pruner, the sampler
seeded so every run trains the same trials) and prints the worker's resident memory when
each trial starts: the command's process and its children (a supervisor and the current
trial process when trials run in recycled processes). Each ``--recycle`` value given is a
separate run, side by side in one table, with its wall time.

Usage: python benchmarks/memory.py [--trials 20] [--train-size 2000] [--recycle 0 5 ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # The process ended meanwhile.
        pass
    return 0


def tree_rss_mb(root: int) -> float:
    """Resident memory of process ``root`` and all its descendants, in MB (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Field 4 of stat is the parent pid; the name (field 2) may hold spaces.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                               .split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grown = {root}, True
    while grown:
        added = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= added
        grown = bool(added)
    return sum(_rss_kb(pid) for pid in tree) / 1024


def rss_per_trial(
    trials: int, train_size: int, data_dir: str | None = None, recycle: int = 0
) -> tuple[list[float], float]:
    """RSS in MB at the start of each trial and once more at the end, and the wall time."""
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "cifar_search", "search", "--study", "memory",
                   "--storage", f"sqlite:///{tmp}/memory.db", "--n-trials", str(trials),
                   "--train-size", str(train_size), "--val-size", "500", "--max-epochs", "1",
                   "--pruner", "none", "--sampler-seed", "0", "--recycle", str(recycle)]
        if data_dir:
            command += ["--data-dir", data_dir]
        start = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
            output = []
            for line in proc.stdout:
                output.append(line)
                if " starts: " in line:
                    samples.append(tree_rss_mb(proc.pid))
                elif line.startswith(f"{trials} trials ("):  # The final summary line.
                    samples.append(tree_rss_mb(proc.pid))
        if proc.returncode:
            raise RuntimeError(f"search failed ({proc.returncode}):\n{''.join(output)}")
        return samples, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--recycle", type=int, nargs="+", default=[0, 5],
                        help="trials per worker process in each run (0: all in one process)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    runs = {r: rss_per_trial(args.trials, args.train_size, args.data_dir, r)
            for r in args.recycle}
    print("| trial | " + " | ".join(f"RSS (MB), --recycle {r}" for r in runs) + " |")
    print("| ---: |" + " ---: |" * len(runs))
    for i in range(args.trials + 1):
        cells = " | ".join(f"{samples[i]:.0f}" if i < len(samples) else "" for samples, _ in
                           runs.values())
        print(f"| {i if i < args.trials else 'end'} | {cells} |")
    for r, (samples, seconds) in runs.items():
        print(f"--recycle {r}: growth after the second trial {max(samples[2:]) - samples[2]:+.0f} "
              f"MB (peak), {samples[-1] - samples[2]:+.0f} MB (end); wall time {seconds:.0f} s")


if __name__ == "__main__":
    main()
