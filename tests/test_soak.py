"""A 2-minute fault-injection soak on each backend (benchmarks/soak.py; the 30-minute runs
are in docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_a_short_soak_keeps_every_invariant(tmp_path, data_dir, storage_url):
    done = subprocess.run(
        [sys.executable, str(SOAK), "--storage", storage_url, "--workers", "4",
         "--minutes", "2", "--fault-every", "5", "--seed", "1", "--out", str(tmp_path)],
        env={**os.environ, "CIFAR10_DIR": str(data_dir)}, capture_output=True, text=True,
        timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**NO**" not in done.stdout
    injected = int(done.stdout.split(" faults injected")[0].rsplit(" ", 1)[1])
    assert injected >= 10, done.stdout
