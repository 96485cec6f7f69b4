"""A 90-second fault-injection soak on each backend (benchmarks/soak.py; the 30-minute runs
are in docs/RELIABILITY.md)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from cifar_search.ledger import open_ledger

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_a_short_soak_keeps_every_invariant(tmp_path, data_dir, storage_url):
    done = subprocess.run(
        [sys.executable, str(SOAK), "--storage", storage_url, "--workers", "4",
         "--minutes", "1.5", "--fault-every", "4", "--seed", "1", "--out", str(tmp_path)],
        env={**os.environ, "CIFAR10_DIR": str(data_dir)}, capture_output=True, text=True,
        timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**NO**" not in done.stdout
    injected = int(done.stdout.split(" faults injected")[0].rsplit(" ", 1)[1])
    assert injected >= 10, done.stdout


def test_faults_start_once_a_worker_has_made_the_study(tmp_path, data_dir):
    """On a loaded machine every worker can still be importing TensorFlow when the faults
    end: a CI run's soak then found no study to check ("no study named ..."). The faults
    start when the study exists, so even a soak with no time for faults checks one."""
    done = subprocess.run(
        [sys.executable, str(SOAK), "--storage", f"sqlite:///{tmp_path}/s.db", "--workers", "1",
         "--minutes", "0", "--seed", "1", "--out", str(tmp_path)],
        env={**os.environ, "CIFAR10_DIR": str(data_dir)}, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**NO**" not in done.stdout


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_with_another_heartbeat_comes_only_after_the_study_is_frozen(tmp_path,
                                                                              data_dir):
    """Otherwise it may freeze the study itself (its soak workers all killed while starting)
    and run for ever, refusing the rest: a CI run of the 2-minute soak hung so."""
    soak = _soak_module()
    args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/s.db", seed=0, out=str(tmp_path),
                              data_dir=str(data_dir), workers=1)
    run = soak.Soak(args)
    try:
        assert not run.inject("wrong-heartbeat") and not run.refused  # No study yet.
        ledger = open_ledger(run.name, args.storage, create=True)
        ledger.freeze_or_check({"heartbeat": soak.HEARTBEAT}, "fingerprint")
        assert run.inject("wrong-heartbeat")
    finally:
        for proc, _ in run.refused:
            proc.kill()
            proc.wait()
    (proc, _), = run.refused
    flags = proc.args[proc.args.index("--n-trials"):]
    assert flags[flags.index("--heartbeat") + 1] == str(soak.HEARTBEAT + 1)
    assert flags[flags.index("--max-epochs") + 1] == soak.TINY[soak.TINY.index("--max-epochs") + 1]
