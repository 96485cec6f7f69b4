"""A short version of benchmarks/memory.py: a worker's memory stays flat across trials.

A leak of our own is caught in one process by what Python allocates (``tracemalloc``, which
sees NumPy's arrays but not TensorFlow's C++ memory): 5 trials on 5,000 images, so that a
float32 copy of the slice kept per trial would add 61 MB a trial: 128 MB between the third
trial's start and the end of the run when one was injected (a throwaway check). TensorFlow's
own growth with every model trained in a process (docs/PERFORMANCE.md, section 7) is what
the default, a forked process per trial, takes away: there the issue's bound, 100 MB of the
process's memory above the second trial, holds at every trial.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

from cifar_search.search import run_search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from memory import memory_per_trial


def test_one_process_does_not_leak_our_own_memory(tmp_path, data_dir):
    """The process's own memory grows by TensorFlow's share, by an amount that depends on
    which configurations the trials train, so that measure could not tell a leak of ours."""
    def traced_mb() -> float:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] / 2**20

    starts: list[float] = []
    tracemalloc.start()
    try:
        run_search("leak", f"sqlite:///{tmp_path}/leak.db", n_trials=5, data_dir=str(data_dir),
                   given={"train_size": 5000, "val_size": 500, "max_epochs": 1,
                          "pruner": "none"},
                   log=lambda line: " starts: " in line and starts.append(traced_mb()))
        after = traced_mb() - starts[2]
    finally:
        tracemalloc.stop()
    assert len(starts) == 5
    assert after < 61, f"Python's memory grew {after:.0f} MB after the second trial: {starts}"


def test_default_trial_processes_stay_within_100_mb_of_the_second_trial(data_dir):
    run = memory_per_trial(trials=8, train_size=5000, data_dir=str(data_dir), recycle=1)
    most, _ = run.growth()
    assert most < 100, f"memory grew {most:.0f} MB after the second trial: {run}"
