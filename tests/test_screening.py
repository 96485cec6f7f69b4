"""Screening (``--pruner screen``): the pruner's rule, and a live search on small real data."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from cifar_search import api, ledger, screening, space
from cifar_search.config import StudyConfig, TrainConfig
from cifar_search.screening import SCREEN_STEP, ScreenPruner
from cifar_search.search import load_train_set, make_pruner, prepare_study, run_search
from cifar_search.space import params_of


def screened(study: optuna.Study, value: float, state: TrialState = TrialState.COMPLETE
             ) -> bool:
    """Add a trial that reports ``value`` at the screening step; whether it is pruned."""
    trial = study.ask()
    trial.report(value, SCREEN_STEP)
    pruned = trial.should_prune()
    if state != TrialState.RUNNING:
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return pruned


def test_the_first_is_kept_then_only_the_top_quarter():
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner())
    assert not screened(study, 0.3)  # Nothing to compare with yet.
    assert screened(study, 0.29, TrialState.PRUNED)  # One other: kept only at or above it.
    assert not screened(study, 0.3)
    # Others 0.3, 0.29, 0.3: their 75th percentile is 0.3.
    assert screened(study, 0.2999, TrialState.PRUNED)
    for value in (0.1, 0.5):
        screened(study, value, TrialState.PRUNED)
    # Others 0.1, 0.29, 0.2999, 0.3, 0.3, 0.5: the 75th percentile is 0.3.
    assert not screened(study, 0.3)
    assert screened(study, 0.299, TrialState.PRUNED)


def test_the_startup_can_be_longer():
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner(n_startup_trials=5))
    assert [screened(study, v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)] == [False] * 5
    # The 75th percentile of 0.1-0.5 is 0.4: below it pruned, at it kept.
    assert screened(study, 0.39, TrialState.PRUNED)
    assert not screened(study, 0.3975)


def test_running_trials_count_and_failed_ones_do_not():
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner())
    screened(study, 0.5)
    screened(study, 0.1, TrialState.FAIL)  # Its retry would report again: not counted.
    assert not screened(study, 0.9, TrialState.RUNNING)
    # Others: 0.5 and the running 0.9 (not the failed 0.1); their 75th percentile is 0.8.
    assert screened(study, 0.79, TrialState.PRUNED)
    # Pruned ones count too: 0.5, 0.79, 0.9 give 0.845.
    assert screened(study, 0.84, TrialState.PRUNED)


@pytest.mark.parametrize("attr", [ledger.PRESET_ATTR, ledger.REFERENCE_ATTR])
def test_a_trial_queued_by_name_is_never_pruned(attr):
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner())
    screened(study, 0.8)
    trial = study.ask()
    trial.set_user_attr(attr, "seed baseline")
    trial.report(0.1, SCREEN_STEP)
    assert not trial.should_prune()
    assert screened(study, 0.1, TrialState.PRUNED)  # The same, proposed by the sampler.


def test_only_the_screening_step_is_judged():
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner())
    screened(study, 0.9)
    trial = study.ask()
    trial.report(0.95, SCREEN_STEP)
    assert not trial.should_prune()
    trial.report(0.01, 1)  # The full run's first epoch: never pruned, however low.
    assert not trial.should_prune()


def test_screening_applies_only_where_it_pays():
    assert isinstance(make_pruner(StudyConfig(pruner="screen", max_epochs=5)), ScreenPruner)
    assert isinstance(make_pruner(StudyConfig(pruner="screen", max_epochs=4)),
                      optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="keep must be in"):
        ScreenPruner(keep=0.0)


def held_trial(study: optuna.Study, value: float, state: TrialState = TrialState.PRUNED
               ) -> None:
    """Add a trial held after a short run of ``value``."""
    trial = study.ask()
    trial.report(value, SCREEN_STEP)
    trial.set_user_attr(ledger.HELD_ATTR, True)
    if state != TrialState.RUNNING:
        study.tell(trial, state=state)


def test_a_cold_study_holds_its_first_two_screened_trials_while_it_has_room():
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        trial = study.ask()  # Its short run just ended (running trials count toward the total).
        assert screening.holds(study.trials, n_trials=3)
        assert not screening.holds(study.trials, n_trials=2)  # No room for 2 held + 1 full.
        trial.set_user_attr(ledger.HELD_ATTR, True)
        study.tell(trial, state=TrialState.PRUNED)
    study.ask()
    assert not screening.holds(study.trials, n_trials=100)  # Two held already.


def test_a_study_past_its_start_holds_nothing_when_resumed():
    """A cold study made before promotions existed (cold-start-30: 12 trials, screened and
    judged) would have held its next two trials on resume."""
    study = optuna.create_study(direction="maximize", pruner=ScreenPruner())
    screened(study, 0.5)
    study.ask()
    assert not screening.holds(study.trials, n_trials=40)


def test_a_failed_held_trial_is_held_again_by_its_retry_not_twice():
    study = optuna.create_study(direction="maximize")
    held_trial(study, 0.5, TrialState.FAIL)
    study.ask()
    assert screening.holds(study.trials, n_trials=10)  # The failed one does not count.
    assert screening.to_promote(study.trials) is None  # Nothing held has ended.


@pytest.mark.parametrize("attr", [ledger.PRESET_ATTR, ledger.REFERENCE_ATTR])
def test_a_warm_started_study_holds_nothing(attr):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={attr: "x"})
    study.ask()
    assert not screening.holds(study.trials, n_trials=100)


def test_the_best_held_short_run_is_promoted_once_all_have_ended():
    study = optuna.create_study(direction="maximize")
    held_trial(study, 0.6)
    assert screening.to_promote(study.trials) is None  # One more to hold.
    held_trial(study, 0.7, TrialState.RUNNING)
    assert screening.to_promote(study.trials) is None  # Still running.
    study.tell(1, state=TrialState.PRUNED)
    assert screening.to_promote(study.trials).number == 1
    study.enqueue_trial({}, user_attrs={ledger.PROMOTED_ATTR: 1})
    assert screening.to_promote(study.trials) is None  # Queued already.
    assert not screening.holds(study.trials, n_trials=100)


def test_a_hold_cut_short_promotes_what_it_held():
    study = optuna.create_study(direction="maximize")
    held_trial(study, 0.6)
    screened(study, 0.4, TrialState.PRUNED)  # Not held (say, another worker's race).
    assert screening.to_promote(study.trials).number == 0


def screened_search(name: str, url: str, data_dir, pruner: str = "screen", max_epochs: int = 5
                    ) -> tuple[list, list[str]]:
    """Run the trials queued in study ``name``, 3 in all, screened on a small slice; its
    trials and log lines."""
    lines: list[str] = []
    given = {"train_size": 1500, "val_size": 300, "max_epochs": max_epochs, "pruner": pruner}
    run_search(name, url, given=given, n_trials=3, data_dir=str(data_dir), presets=[],
               enqueue_baseline=False, log=lines.append)
    return optuna.load_study(study_name=name, storage=url).get_trials(), lines


def test_a_live_cold_study_holds_two_and_trains_the_better_in_full(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/cold.db"
    study = optuna.create_study(study_name="c", storage=url, direction="maximize")
    # Trial 0 stands for the retry of a trial held before its worker died: held again, on
    # the short run it carries (outside the space on purpose: it would learn nothing).
    study.enqueue_trial(params_of(TrainConfig(optimizer="sgd", learning_rate=1e-7)),
                        user_attrs={"screen": {"val_accuracy": [0.1, 0.1], "seconds": [1, 1]},
                                    ledger.HELD_ATTR: True})
    better = params_of(TrainConfig(optimizer="adam", learning_rate=1e-3))
    study.enqueue_trial(better)
    trials, lines = screened_search("c", url, data_dir)
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2 + [TrialState.COMPLETE]
    assert all(t.user_attrs[ledger.HELD_ATTR] for t in trials[:2])
    promoted = trials[2]
    assert promoted.user_attrs[ledger.PROMOTED_ATTR] == 1 and promoted.params == better
    # Its short run was its held trial's: not trained, not reported again.
    assert "screen" not in promoted.user_attrs
    assert sorted(promoted.intermediate_values) == [1, 2, 3, 4, 5]
    assert not any(line.startswith("trial 0 screen") for line in lines)
    assert ("trial 2 trains trial 1's parameters in full: the best short run of the trials "
            "held") in lines
    results = api.results("c", storage=url)
    assert [r.epochs_run for r in results.trials] == [2, 2, 5]
    states = [line.split("  ")[1] for line in results.table().splitlines()[4:7]]
    assert states == ["PRUNED (held)", "PRUNED (held)", "COMPLETE (promoted from 1)"]


def test_a_promotion_lost_with_its_worker_is_queued_by_the_next_claim(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/lost.db"
    given = {"train_size": 500, "val_size": 200, "max_epochs": 5, "pruner": "screen"}
    fingerprint = load_train_set(str(data_dir))[2]
    study = prepare_study("l", url, given, fingerprint)[0].study
    for value in (0.3, 0.2):  # Both held and ended; the worker died before queuing the best.
        trial = study.ask()
        space.sample(trial, epochs=5, seed=0)
        trial.set_user_attr(ledger.HELD_ATTR, True)
        trial.report(value, SCREEN_STEP)
        study.tell(trial, state=TrialState.PRUNED)
    lines: list[str] = []
    run_search("l", url, given=given, n_trials=3, data_dir=str(data_dir), log=lines.append)
    trials = study.get_trials()
    assert trials[2].user_attrs[ledger.PROMOTED_ATTR] == 0
    assert trials[2].params == trials[0].params and trials[2].state == TrialState.COMPLETE
    assert ("trial 2 trains trial 0's parameters in full: the best short run of the trials "
            "held") in lines


def test_epochs_trained_counts_the_screen():
    attrs = {"screen": {"val_accuracy": [0.1, 0.2], "seconds": [1.0, 2.0]},
             "history": {"val_accuracy": [0.3] * 5, "seconds": [3.0] * 5}}
    assert screening.epochs_trained(attrs) == 7
    assert screening.seconds_trained(attrs) == [1.0, 2.0, *[3.0] * 5]
    assert screening.epochs_trained({}) == 0


def test_a_live_screen_prunes_the_laggard_and_a_retry_is_not_screened_again(tmp_path,
                                                                            data_dir):
    url = f"sqlite:///{tmp_path}/screen.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    # Trial 0 stands for the retry of a trial kept by its screen before its worker died: the
    # ledger's retries carry the trial's user attributes.
    kept = {"val_accuracy": [0.1, 0.12], "seconds": [1.0, 1.0]}
    study.enqueue_trial(params_of(TrainConfig(optimizer="adam", learning_rate=1e-3)),
                        user_attrs={"screen": kept})
    # Judged against trial 0's screen alone: kept if it learns anything in 2 epochs.
    study.enqueue_trial(params_of(TrainConfig(optimizer="adam", learning_rate=1e-3,
                                              batch_size=64)))
    # Outside the space on purpose (Optuna warns and uses it): learns nothing in 2 epochs.
    study.enqueue_trial(params_of(TrainConfig(optimizer="sgd", learning_rate=1e-7)))
    trials, lines = screened_search("s", url, data_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    assert trials[0].user_attrs["screen"] == kept
    assert not any(line.startswith("trial 0 screen") for line in lines)
    for trial in trials:
        screen = trial.user_attrs["screen"]["val_accuracy"]
        assert len(screen) == 2 and trial.intermediate_values[SCREEN_STEP] == screen[-1]
    for trial in trials[:2]:  # Kept: the full budget, from scratch, reported from epoch 1.
        assert len(trial.user_attrs["history"]["val_accuracy"]) == 5
        assert sorted(trial.intermediate_values) == [SCREEN_STEP, 1, 2, 3, 4, 5]
    assert "history" not in trials[2].user_attrs
    assert any("trial 2 pruned" in line for line in lines)
    records = api.results("s", storage=url).trials
    assert [r.epochs_run for r in records] == [7, 7, 2]


def test_a_budget_too_short_to_screen_trains_unscreened_and_says_so(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/short.db"
    lines: list[str] = []
    run_search("short", url, given={"train_size": 500, "val_size": 200, "max_epochs": 1,
                                    "pruner": "screen"},
               n_trials=1, data_dir=str(data_dir), presets=[], log=lines.append)
    assert "no trial of this study is pruned" in lines[1]
    trial = optuna.load_study(study_name="short", storage=url).trials[0]
    assert "screen" not in trial.user_attrs and list(trial.intermediate_values) == [1]


def rung(study: optuna.Study, value: float, state: TrialState = TrialState.PRUNED) -> None:
    """Add a trial whose ladder rung ended at ``value``."""
    trial = study.ask()
    trial.set_user_attr(screening.LADDER_ATTR, {"val_accuracy": [0.1, value]})
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)


def test_the_ladder_keeps_the_first_on_its_rung_then_the_top_third():
    study = optuna.create_study(direction="maximize")
    assert not screening.lags_on_rung(study.trials, 99, 0.1)  # Nothing to compare with yet.
    rung(study, 0.5)
    assert screening.lags_on_rung(study.trials, 99, 0.49)
    assert not screening.lags_on_rung(study.trials, 99, 0.5)
    rung(study, 0.6, TrialState.COMPLETE)
    rung(study, 0.9, TrialState.FAIL)  # Its retry carries it: not counted twice.
    rung(study, 0.7)
    # The others: 0.5, 0.6, 0.7; the top third starts at their 67th percentile, 0.633.
    assert screening.lags_on_rung(study.trials, 99, 0.63)
    assert not screening.lags_on_rung(study.trials, 99, 0.64)
    # A trial is not compared with itself.
    assert not screening.lags_on_rung(study.trials[:1], study.trials[0].number, 0.1)


def test_the_ladder_applies_where_its_rung_pays():
    ladder = StudyConfig(pruner="ladder", max_epochs=13)
    assert screening.screens(ladder) and screening.climbs(ladder)
    assert screening.screen_keep(ladder) == pytest.approx(1 / 3)
    assert make_pruner(ladder).keep == pytest.approx(1 / 3)
    short = StudyConfig(pruner="ladder", max_epochs=12)  # Screened, without the rung.
    assert screening.screens(short) and not screening.climbs(short)
    screen = StudyConfig(pruner="screen", max_epochs=15)
    assert not screening.climbs(screen) and make_pruner(screen).keep == screening.SCREEN_KEEP


def test_epochs_trained_counts_the_rung():
    attrs = {"screen": {"val_accuracy": [0.1] * 2, "seconds": [1.0] * 2},
             "rung": {"val_accuracy": [0.2] * 6, "seconds": [2.0] * 6},
             "history": {"val_accuracy": [0.3] * 13, "seconds": [3.0] * 13}}
    assert screening.epochs_trained(attrs) == 21
    assert screening.seconds_trained(attrs) == [1.0] * 2 + [2.0] * 6 + [3.0] * 13


def test_a_live_ladder_prunes_on_its_rung_and_retries_climb_once(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/ladder.db"
    study = optuna.create_study(study_name="l", storage=url, direction="maximize")
    low = {"val_accuracy": [0.1, 0.12], "seconds": [1.0, 1.0]}
    # Trial 0 stands for the retry of a trial kept on its rung before its worker died: it
    # neither screens nor climbs again.
    study.enqueue_trial(params_of(TrainConfig(optimizer="adam", learning_rate=1e-3)),
                        user_attrs={"screen": low, "rung": low})
    # Kept by its screen and on its rung (against trial 0's 0.12) if it learns anything.
    study.enqueue_trial(params_of(TrainConfig(optimizer="adam", learning_rate=1e-3,
                                              batch_size=64)))
    # The retry of a trial its screen kept, killed on its rung: it climbs, and lags there
    # (outside the space on purpose: learns nothing).
    study.enqueue_trial(params_of(TrainConfig(optimizer="sgd", learning_rate=1e-7)),
                        user_attrs={"screen": low})
    trials, lines = screened_search("l", url, data_dir, pruner="ladder", max_epochs=13)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    assert trials[0].user_attrs["rung"] == low and trials[2].user_attrs["screen"] == low
    assert not any(line.startswith(("trial 0 screens", "trial 0 climbs", "trial 2 screens"))
                   for line in lines)
    assert any(line.startswith("trial 2 climbs a rung of 6 epochs") for line in lines)
    for trial in trials[1:]:
        assert len(trial.user_attrs["rung"]["val_accuracy"]) == 6
    assert trials[1].user_attrs["rung"]["val_accuracy"][-1] > 0.12
    assert (trials[2].user_attrs["rung"]["val_accuracy"][-1]
            < trials[1].user_attrs["rung"]["val_accuracy"][-1])
    assert "history" not in trials[2].user_attrs
    assert sorted(trials[1].intermediate_values) == [SCREEN_STEP, *range(1, 14)]
    assert any("trial 2 pruned" in line for line in lines)
    records = api.results("l", storage=url).trials
    assert [r.epochs_run for r in records] == [2 + 2 + 13, 2 + 6 + 13, 2 + 6]


def test_a_trial_with_no_short_run_to_be_judged_against_awaits_a_peers():
    study = optuna.create_study(direction="maximize")
    peer = study.ask()  # Another worker's trial, still training its short run.
    mine = study.ask()
    mine.report(0.3, SCREEN_STEP)
    assert screening.awaits_peer(study.trials, mine.number)
    peer.report(0.4, SCREEN_STEP)  # Something to be judged against: no waiting.
    assert not screening.awaits_peer(study.trials, mine.number)
    assert screening.short_runs(study.trials, mine.number) == [0.4]


@pytest.mark.parametrize("attr", [ledger.PRESET_ATTR, ledger.REFERENCE_ATTR])
def test_a_trial_queued_by_name_does_not_wait_it_is_never_pruned(attr):
    study = optuna.create_study(direction="maximize")
    study.ask()  # Another worker's trial, still training its short run.
    mine = study.ask()
    mine.set_user_attr(attr, "bn-aug-adamw")
    mine.report(0.3, SCREEN_STEP)
    assert not screening.awaits_peer(study.trials, mine.number)


@pytest.mark.parametrize("peer_is", ["failed", "promoted", "absent"])
def test_no_waiting_for_a_peer_that_will_not_screen(peer_is):
    study = optuna.create_study(direction="maximize")
    if peer_is != "absent":
        peer = study.ask()
        if peer_is == "failed":
            study.tell(peer, state=TrialState.FAIL)
        else:  # A promoted full run skips its screen.
            peer.set_user_attr(ledger.PROMOTED_ATTR, 0)
    mine = study.ask()
    mine.report(0.3, SCREEN_STEP)
    assert not screening.awaits_peer(study.trials, mine.number)


def test_a_live_screen_waits_for_a_peers_short_run_to_judge_against(tmp_path, data_dir):
    """Two workers start a warm-started study: the sampled trial's short run ends first.
    Judged at once it would go on for want of a comparison; it waits for the preset's."""
    url = f"sqlite:///{tmp_path}/peer.db"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    peer = study.ask()  # The preset, on another worker, still in its short run.
    peer.set_user_attr(ledger.PRESET_ATTR, "bn-aug-adamw")
    # Outside the space on purpose (Optuna warns and uses it): learns little in 2 epochs.
    study.enqueue_trial(params_of(TrainConfig(optimizer="sgd", learning_rate=1e-7)))

    def the_peer_reports_once_mine_has() -> None:
        deadline = time.monotonic() + 600  # Not forever, should the search fail.
        while (time.monotonic() < deadline and (len(study.trials) < 2 or SCREEN_STEP
                                                not in study.trials[1].intermediate_values)):
            time.sleep(0.1)
        peer.report(0.9, SCREEN_STEP)

    reporter = threading.Thread(target=the_peer_reports_once_mine_has)
    reporter.start()
    lines: list[str] = []
    run_search("p", url, given={"train_size": 500, "val_size": 200, "max_epochs": 5,
                                "pruner": "screen"},
               n_trials=2, data_dir=str(data_dir), presets=[], enqueue_baseline=False,
               log=lines.append)
    reporter.join()
    mine = study.trials[1]
    assert mine.state == TrialState.PRUNED and "history" not in mine.user_attrs
    assert ("trial 1 waits for another trial's short run, to be judged against it") in lines
