"""Memory of one worker over consecutive trials (issue: flat memory).

Runs ``cifar-search search`` on small slices (1 epoch per trial, no pruner, the sampler
seeded so every run trains the same trials) and prints the worker's memory when each trial
starts and when its (only) epoch ends: the resident memory (RSS) of the command's largest
process (the trial process, where there is one) plus the private memory of the others (the
supervisor), so that the pages a supervisor shares with its forked trial process (the loaded
images, the libraries) count once. For a search in one process this is its RSS. Each
``--recycle`` value given is a separate run, side by side in one table, with its wall time.

Usage: python benchmarks/memory.py [--trials 20] [--train-size 2000] [--recycle 0 1 5 ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def _memory_kb(pid: int) -> tuple[int, int]:
    """Resident and private (not shared with any other process) memory of ``pid``, in kB."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0])
    except OSError:  # The process ended meanwhile.
        pass
    return fields.get("Rss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def tree_memory_mb(root: int) -> float:
    """Memory of process ``root`` and its descendants, in MB (Linux /proc): the RSS of the
    largest and the private memory of the others."""
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
    sizes = sorted(_memory_kb(pid) for pid in tree)
    return (sizes[-1][0] + sum(private for _, private in sizes[:-1])) / 1024


@dataclass
class Run:
    """Memory in MB at each trial's start and end and after the run's last trial; seconds."""

    starts: list[float]
    ends: list[float]
    final: float
    seconds: float

    def growth(self) -> tuple[float, float]:
        """The issue's measure: memory above the second trial's start, at most at a later
        trial's start (or after the run), and after the run."""
        later = [*self.starts[3:], self.final]
        return max(later) - self.starts[2], self.final - self.starts[2]


def memory_per_trial(
    trials: int, train_size: int, data_dir: str | None = None, recycle: int = 0
) -> Run:
    """Run a search of ``trials`` trials and sample its memory as each one starts and ends."""
    run = Run([], [], 0.0, 0.0)
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
                    run.starts.append(tree_memory_mb(proc.pid))
                elif " epoch 1/1: " in line:  # Trained; its process is still there.
                    run.ends.append(tree_memory_mb(proc.pid))
                elif line.startswith(f"{trials} trials ("):  # The final summary line.
                    run.final = tree_memory_mb(proc.pid)
        run.seconds = time.perf_counter() - start
        if proc.returncode or len(run.starts) != trials or not run.final:
            raise RuntimeError(f"search failed ({proc.returncode}):\n{''.join(output)}")
        return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--recycle", type=int, nargs="+", default=[0, 1, 5],
                        help="trials per trial process in each run (0: all in one process)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    runs = {r: memory_per_trial(args.trials, args.train_size, args.data_dir, r)
            for r in args.recycle}
    print("| trial | " + " | ".join(f"--recycle {r}: start | end" for r in runs) + " |")
    print("| ---: |" + " ---: | ---: |" * len(runs))
    for i in range(args.trials):
        cells = " | ".join(f"{run.starts[i]:.0f} | {run.ends[i]:.0f}" for run in runs.values())
        print(f"| {i} | {cells} |")
    print("| after | " + " | ".join(f"{run.final:.0f} | " for run in runs.values()) + " |")
    for r, run in runs.items():
        most, last = run.growth()
        print(f"--recycle {r}: above the second trial's start: {most:+.0f} MB at most at a "
              f"later trial's start, {last:+.0f} MB after the run; highest at a trial's end "
              f"{max(run.ends):.0f} MB; wall time {run.seconds:.0f} s")


if __name__ == "__main__":
    main()
