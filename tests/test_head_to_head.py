"""The head-to-head benchmark's arms (``benchmarks/head_to_head.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from cifar_search import screening

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from head_to_head import arm_config


def test_the_optuna_arms_do_not_screen():
    # Screening is cifar-search's pruning; these arms prune with their own pruners or none.
    for arm in ("optuna-defaults", "random"):
        assert not screening.screens(arm_config(arm))
