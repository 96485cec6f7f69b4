"""A short version of benchmarks/memory.py: a worker's memory stays flat across trials.

In one process (``--recycle 0``) this catches a leak of our own: 8 trials, the sampler
seeded so they are the same trials every time, on 5,000 images so that a float32 copy of the
slice kept per trial would add 61 MB a trial. TensorFlow's own growth of 10-20 MB per model
(docs/PERFORMANCE.md, section 7) is what recycled processes, the default, take away.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from memory import rss_per_trial  # noqa: E402


def test_worker_memory_is_flat_over_trials(data_dir):
    samples, _ = rss_per_trial(trials=8, train_size=5000, data_dir=str(data_dir), recycle=0)
    assert len(samples) == 9
    growth = samples[-1] - samples[2]  # At the end of the run, as the benchmark prints.
    assert growth < 100, f"RSS grew {growth:.0f} MB after the second trial: {samples}"
