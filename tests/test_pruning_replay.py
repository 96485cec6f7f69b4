"""benchmarks/pruning.py --replay: the method behind PERFORMANCE.md section 5, on made-up curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

from cifar_search import ledger
from cifar_search.config import StudyConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from pruning import ShortRun, candidate, read_short_runs, replay
from short_budgets import Trial, done_before

SLOW_STARTER = [0.2, 0.3, 0.35, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]  # The best, at the end.
STEADY = [0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.7, 0.7, 0.7, 0.7]
STUCK = [0.1] * 10


def unpruned_study(curves: list[list[float]],
                   losses: list[list[float]] | None = None) -> optuna.Study:
    """Trials with these validation accuracy curves (and losses: 1 - accuracy by default)."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ledger.CONFIG_ATTR, StudyConfig(max_epochs=10, pruner="none").to_dict())
    for i, curve in enumerate(curves):
        trial = study.ask()
        loss = losses[i] if losses else [1 - value for value in curve]
        trial.set_user_attr("history", {"val_accuracy": curve, "val_loss": loss,
                                        "seconds": [2.0] * len(curve)})
        study.tell(trial, max(curve))
    return study


def test_median_replay_stops_lagging_trials_after_its_warm_up():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 4, STUCK, STUCK])
    row = replay(candidate("median"), source)
    # 5 startup trials run in full; the stuck ones stop at the first step it judges (5 of 10).
    assert (row.trials, row.pruned, row.epochs) == (7, 2, 5 * 10 + 2 * 5)
    assert row.seconds == 2.0 * row.epochs
    assert row.best == 0.9
    assert [(number, epoch) for number, epoch, _ in row.stopped] == [(5, 5), (6, 5)]


def test_best_last_replay_shows_a_slow_starter_cut_short():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 5])
    assert replay(candidate("median"), source).best == 0.9  # First: a startup trial, never judged.
    late = replay(candidate("median"), source, best_last=True)
    assert late.best == 0.7
    assert late.stopped == [(0, 5, 0.9)]
    # Judging from epoch 7 on, the median pruner lets the slow starter finish.
    waited = replay(candidate("median-7"), source, best_last=True)
    assert waited.best == 0.9 and waited.pruner == "median from epoch 7"


def test_replay_order_is_the_order_the_pruner_sees():
    source = unpruned_study([SLOW_STARTER, *[STEADY] * 5])
    moved = replay(candidate("median"), source, order=[1, 2, 3, 4, 5, 0])
    assert (moved.best, moved.stopped) == (0.7, [(0, 5, 0.9)])
    assert replay(candidate("median"), source, order=[0, 1, 2, 3, 4, 5]).best == 0.9


def test_a_lower_percentile_stops_only_the_laggards():
    spread = [[v + d for v in STEADY] for d in (-0.15, -0.05, 0.0, 0.05, 0.1)]  # 0.40-0.65
    behind = [0.4, 0.5, 0.52, 0.6, 0.65, 0.7, 0.72, 0.74, 0.76, 0.78]  # At epoch 3: 0.52.
    source = unpruned_study([*spread, behind, STUCK])
    median = replay(candidate("median-3"), source)
    lower = replay(candidate("percentile25-3"), source)
    assert [(n, epoch) for n, epoch, _ in median.stopped] == [(5, 3), (6, 3)]
    assert [(n, epoch) for n, epoch, _ in lower.stopped] == [(6, 3)]  # Over 0.50, the 25th.
    assert lower.pruner == "below the 25th percentile from epoch 3"


def test_patience_waits_while_a_trial_still_improves():
    climbing = [0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.95]
    falling = [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    source = unpruned_study([*[STEADY] * 5, climbing, falling])
    assert replay(candidate("median-3"), source).best == 0.7  # The climber is stopped at 3.
    patient = replay(candidate("patient2-median-3"), source)
    assert patient.best == 0.95
    # Optuna's PatientPruner asks the median pruner only once a trial's best of the last
    # 3 epochs is below its best before them: the falling trial, at epoch 4.
    assert [(n, epoch) for n, epoch, _ in patient.stopped] == [(6, 4)]


def test_the_loss_candidate_judges_the_loss_and_keeps_the_accuracy():
    # Trial 5: behind on accuracy early, but its loss is already the lowest.
    curve = [0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92]
    losses = [[1 - v for v in STEADY]] * 5 + [[0.3] * 10]
    source = unpruned_study([*[STEADY] * 5, curve], losses)
    assert replay(candidate("median-3"), source).best == 0.7
    on_loss = replay(candidate("median-loss-3"), source)
    assert (on_loss.best, on_loss.pruned) == (0.92, 0)
    assert on_loss.pruner == "median of validation loss from epoch 3"


def test_an_unknown_candidate_is_refused():
    with pytest.raises(ValueError, match="unknown candidate 'median-'"):
        candidate("median-")


def test_a_screen_keeps_trials_whose_short_run_is_good_enough():
    # Trial 6 is the best in full but starts slowly; its short run says so.
    source = unpruned_study([*[STEADY] * 5, STUCK, SLOW_STARTER, STEADY])
    short = {3: {0: ShortRun(0.5, 9.0), 1: ShortRun(0.55, 9.0), 2: ShortRun(0.6, 9.0),
                 3: ShortRun(0.65, 9.0), 4: ShortRun(0.7, 9.0), 5: ShortRun(0.1, 9.0),
                 6: ShortRun(0.75, 9.0), 7: ShortRun(0.58, 9.0)}}
    half = replay(candidate("screen3-half"), source, short_runs=short)
    # The first five are kept; 5 is below the median of 0.5-0.7 (0.6); 6 is above the
    # median of six (0.575); 7 (0.58) is below that of seven (0.6).
    assert [(n, epoch) for n, epoch, _ in half.stopped] == [(5, 3), (7, 3)]
    assert (half.trials, half.pruned, half.best) == (8, 2, 0.9)
    assert half.epochs == 8 * 3 + 6 * 10 and half.seconds == 8 * 9.0 + 6 * 20.0
    quarter = replay(candidate("screen3-quarter"), source, short_runs=short)
    assert [n for n, _, _ in quarter.stopped] == [5, 7] and quarter.best == 0.9
    assert quarter.pruner == "screen on 3 fitted epochs, keep the top quarter"
    # Stricter than the median: kept only from the 75th percentile of the earlier ones.
    short[3][7] = ShortRun(0.61, 9.0)
    assert [n for n, _, _ in replay(candidate("screen3-half"), source,
                                    short_runs=short).stopped] == [5]
    assert [n for n, _, _ in replay(candidate("screen3-quarter"), source,
                                    short_runs=short).stopped] == [5, 7]


def test_a_screen_with_fewer_startup_trials_judges_sooner():
    source = unpruned_study([STEADY] * 3)
    short = {2: {0: ShortRun(0.5, 9.0), 1: ShortRun(0.45, 9.0), 2: ShortRun(0.48, 9.0)}}
    assert replay(candidate("screen2-quarter"), source, short_runs=short).pruned == 0
    sooner = replay(candidate("screen2-quarter-startup1"), source, short_runs=short)
    # Trial 1 is below trial 0's short run; trial 2 below 0.45 + 0.75 * 0.05 = 0.4875.
    assert [n for n, _, _ in sooner.stopped] == [1, 2]
    assert sooner.pruner == "screen on 2 fitted epochs, keep the top quarter, 1 startup"
    assert replay(candidate("screen"), source, short_runs=short).stopped == sooner.stopped


def test_promoting_holds_the_first_two_and_trains_the_better_in_full():
    source = unpruned_study([STEADY, SLOW_STARTER, STUCK, STEADY])
    short = {2: {0: ShortRun(0.5, 9.0), 1: ShortRun(0.6, 9.0), 2: ShortRun(0.1, 9.0),
                 3: ShortRun(0.7, 9.0)}}
    row = replay(candidate("screen-promote2"), source, short_runs=short)
    # 0 and 1 held; 1 (the better short run) trained in full; 2 below the others' 75th
    # percentile; 3 above it, kept.
    assert [n for n, _, _ in row.stopped] == [0, 1, 2]
    assert (row.trials, row.pruned, row.best) == (5, 3, 0.9)
    assert row.epochs == 4 * 2 + 2 * 10
    assert row.points[:3] == [(2, 0.5), (4, 0.6), (5, SLOW_STARTER[0])]
    assert row.pruner == "screen, the best of the first 2 short runs promoted"
    plain = replay(candidate("screen"), source, short_runs=short)  # Trial 0 trained in full.
    assert plain.points[1] == (3, STEADY[0])


def test_the_best_by_a_number_of_epochs_counts_every_epoch_trained_in_order():
    source = unpruned_study([STEADY, SLOW_STARTER])
    none = replay(candidate("none"), source)
    assert none.best_by(3) == 0.55 and none.best_by(12) == 0.7 and none.best_by(20) == 0.9
    short = {2: {0: ShortRun(0.62, 9.0), 1: ShortRun(0.6, 9.0)}}
    screen = replay(candidate("screen"), source, short_runs=short)
    # Trial 0's short run (0.62 after 2 epochs), then its full run; trial 1 screened out.
    assert screen.best_by(1) != screen.best_by(1) and screen.best_by(2) == 0.62  # NaN: none yet.
    assert screen.best_by(12) == 0.7 and screen.best_by(14) == 0.7 and screen.epochs == 14


def test_a_screen_needs_its_short_runs(tmp_path):
    source = unpruned_study([STEADY])
    with pytest.raises(ValueError, match="3-epoch short runs"):
        replay(candidate("screen3-half"), source, short_runs={2: {0: ShortRun(0.5, 1.0)}})
    saved = tmp_path / "short.json"
    saved.write_text(json.dumps({"study": "s", "epochs": 2, "trials": [
        {"number": 0, "full": 0.7, "at_epoch": 0.5, "short": 0.6, "short_seconds": 4.0}]}))
    assert read_short_runs([str(saved)]) == {2: {0: ShortRun(0.6, 4.0)}}


def test_short_budgets_keeps_earlier_short_runs_of_the_same_study_and_budget(tmp_path):
    saved = tmp_path / "short.json"
    assert done_before(saved, "s", 2, False) == []
    saved.write_text(json.dumps({"study": "s", "epochs": 2, "trials": [
        {"number": 0, "full": 0.7, "at_epoch": 0.5, "short": 0.6, "short_seconds": 4.0}]}))
    assert done_before(saved, "s", 2, False) == [Trial(0, 0.7, 0.5, 0.6, 4.0)]
    with pytest.raises(SystemExit, match="with 2 epochs"):
        done_before(saved, "s", 3, False)
    # A file written before the flag was recorded had the moving statistics; runs with
    # recomputed ones are not mixed into it.
    with pytest.raises(SystemExit, match="precise_bn False"):
        done_before(saved, "s", 2, True)
