"""A short version of benchmarks/memory.py: what one worker keeps per trial stays small.

The issue's goal (at most 100 MB of growth over 20 trials) is not met: TensorFlow grows by
10-20 MB per model trained in one process (docs/PERFORMANCE.md, section 7). This test guards
against leaks of our own on top of that: a float32 copy of the 5,000-image training slice
kept per trial would add 61 MB a trial, a kept model with its optimizer state about 8 MB
plus its graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from memory import rss_per_trial  # noqa: E402

TRIALS = 8
MB_PER_TRIAL = 25  # Above the upstream growth measured here, below one leaked data copy.


def test_worker_memory_per_trial_stays_small(data_dir):
    samples = rss_per_trial(trials=TRIALS, train_size=5000, data_dir=str(data_dir))
    assert len(samples) == TRIALS + 1
    per_trial = (samples[-1] - samples[2]) / (TRIALS - 2)
    assert per_trial < MB_PER_TRIAL, f"RSS grew {per_trial:.0f} MB a trial: {samples}"
