"""A short version of benchmarks/memory.py: one worker's memory stays flat across trials."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from memory import rss_per_trial  # noqa: E402


def test_worker_memory_is_flat_over_trials(data_dir):
    samples = rss_per_trial(trials=8, train_size=500, data_dir=str(data_dir))
    assert len(samples) == 9
    growth = samples[-1] - samples[2]
    assert growth < 100, f"RSS grew {growth:.0f} MB after the second trial: {samples}"
