"""The head-to-head benchmark's arms (``benchmarks/head_to_head.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifar_search import screening

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from head_to_head import arm_command, arm_config


def test_the_optuna_arms_do_not_screen():
    # Screening is cifar-search's pruning; these arms prune with their own pruners or none.
    for arm in ("optuna-defaults", "random"):
        assert not screening.screens(arm_config(arm))


def test_the_cifar_search_arm_starts_cold_with_the_flags_given(tmp_path):
    args = argparse.Namespace(seed=1, train_size=0, val_size=0, data_dir=None,
                              cifar_search_flags="--random-trials 4")
    command = arm_command("cifar-search", args, tmp_path)
    assert {"--no-preset", "--no-baseline", "--sampler-seed=1"} <= set(command)
    assert command[-2:] == ["--random-trials", "4"]
