"""benchmarks/pruning.py --replay: the method behind PERFORMANCE.md section 5, on made-up curves."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from cifar_search import ledger
from cifar_search.config import StudyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pruning import replay

SLOW_STARTER = [0.2, 0.3, 0.35, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]  # The best, at the end.
STEADY = [0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.7, 0.7, 0.7, 0.7]
STUCK = [0.1] * 10


def unpruned_study(curves: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ledger.CONFIG_ATTR, StudyConfig(max_epochs=10, pruner="none").to_dict())
    for curve in curves:
        trial = study.ask()
        trial.set_user_attr("history", {"val_accuracy": curve, "seconds": [2.0] * len(curve)})
        study.tell(trial, max(curve))
    return study


def test_median_replay_stops_lagging_trials_after_its_warm_up():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 4, STUCK, STUCK])
    row = replay("median", source)
    # 5 startup trials run in full; the stuck ones stop at the first step it judges (5 of 10).
    assert (row.trials, row.pruned, row.epochs) == (7, 2, 5 * 10 + 2 * 5)
    assert row.seconds == 2.0 * row.epochs
    assert row.best == 0.9
    assert [(number, epoch) for number, epoch, _ in row.stopped] == [(5, 5), (6, 5)]


def test_best_last_replay_shows_a_slow_starter_cut_short():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 5])
    assert replay("median", source).best == 0.9  # First: a startup trial, never judged.
    late = replay("median", source, best_last=True)
    assert late.best == 0.7
    assert late.stopped == [(0, 5, 0.9)]
    # Judging from epoch 7 on, the median pruner lets the slow starter finish.
    waited = replay("median", source, best_last=True, warmup=7)
    assert waited.best == 0.9 and waited.pruner == "median from epoch 7"


def test_replay_order_is_the_order_the_pruner_sees():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 5])
    moved = replay("median", source, order=[1, 2, 3, 4, 5, 0])
    assert (moved.best, moved.stopped) == (0.7, [(0, 5, 0.9)])
    assert replay("median", source, order=[0, 1, 2, 3, 4, 5]).best == 0.9
