"""Screening: judge a trial on a short run whose schedule fits the short budget.

A pruner that judges epoch E of a run whose learning-rate schedule spans the whole budget sees
a trial still at a high learning rate (batch-norm trials swing by 20-50 points there), so
early judgements lose the best trials. A short run of ``SCREEN_EPOCHS`` epochs with its
schedule fitted to them ends cooled, like a full run, and ranks trials closer to their
full-budget result (docs/PERFORMANCE.md, section 5). So, with ``--pruner screen``, every trial
first trains that short run; its final validation accuracy is reported at step 0. The first
trial goes on whatever its short run; from the second on, a trial whose short run is below the
top ``SCREEN_KEEP`` share of all the others' is pruned, unless the study queued it by name
(a preset, or the seed's baseline, which a study holds to measure it). A kept trial trains its
full budget from scratch (reported at steps 1, 2, ...), so it costs ``SCREEN_EPOCHS`` more
epochs than unscreened. With several workers, a trial whose short run ends before any other
trial's first waits for one still training (:func:`awaits_peer`; at most the longer of
``AWAIT_SECONDS`` and its own short run's time), rather than go on for want of a comparison.

A cold study (no trial queued by name) would so train its first trial in full whatever its
short run. Instead it *holds* its first ``PROMOTE`` trials after their short runs (pruned,
marked held), then queues the full run of the best of them as a new trial (marked promoted),
which skips its screen; later trials are screened against all earlier short runs. In the
replay of docs/PERFORMANCE.md section 10 this reached better trials sooner on both unpruned
studies and saved more epochs, keeping the best as often.

``--pruner ladder`` adds a rung: a trial its short run keeps (the top ``LADDER_KEEP`` share
there) trains a second short run of ``LADDER_EPOCHS``, again with its schedule fitted, and goes
on to its full budget only if that run is in the top ``LADDER_KEEP`` share of the other
trials' second runs. It is the rung ladder of docs/PERFORMANCE.md, section 10, measured live
against the default there.

Screening is the default pruner: of 17 candidates replayed on two unpruned studies (200 trial
orders each), by rules written before the replays, it saved the most epochs (51.0% and 44.3%)
among those keeping the best within 0.5 points in 90% of the orders (96% and 98%).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from cifar_search.config import StudyConfig
from cifar_search.ledger import HELD_ATTR, PRESET_ATTR, PROMOTED_ATTR, REFERENCE_ATTR, counted

# The short run's epochs, the share of trials kept, and how many trials are screened before
# any is pruned (5 kept the best as often in the replay but saved 11 points fewer epochs).
SCREEN_EPOCHS = 2
SCREEN_KEEP = 0.25
STARTUP_TRIALS = 1
# The trials a cold study holds before promoting the best (2 reached better trials sooner than
# 3 or 4 in the replay, by the rule written before it).
PROMOTE = 2
# The ladder's second short run, and the share of trials each of its rungs keeps.
LADDER_EPOCHS = 6
LADDER_KEEP = 1 / 3
# The trial's user attribute holding the ladder's second short run, recorded once it is judged.
LADDER_ATTR = "rung"
# The least time a screened trial waits for a peer's short run to be judged against
# (awaits_peer); a peer's worker may have died.
AWAIT_SECONDS = 60.0
# The step at which a trial reports its short run (full-run epochs are reported from 1).
SCREEN_STEP = 0
# The trial's user attribute holding the short run's curves (as "history" holds the full run's).
SCREEN_ATTR = "screen"


def screens(config: StudyConfig) -> bool:
    """Whether the study's trials are screened: its pruner is ``screen`` or ``ladder`` and its
    budget one where screening pays (the short run well under half of it)."""
    return config.pruner in ("screen", "ladder") and config.max_epochs > 2 * SCREEN_EPOCHS


def climbs(config: StudyConfig) -> bool:
    """Whether the trials a screen keeps train the ladder's second rung: the pruner is
    ``ladder`` and the rung well under half the budget."""
    return config.pruner == "ladder" and config.max_epochs > 2 * LADDER_EPOCHS


def screen_keep(config: StudyConfig) -> float:
    """The share of trials the study's screen keeps."""
    return LADDER_KEEP if config.pruner == "ladder" else SCREEN_KEEP


def lags_on_rung(trials: Sequence[FrozenTrial], number: int, value: float,
                 keep: float = LADDER_KEEP, n_startup_trials: int = STARTUP_TRIALS) -> bool:
    """Whether trial ``number``, whose second short run ended at ``value``, is below the top
    ``keep`` share of the other trials' second runs (failed trials' not counted: a failed
    trial's retry carries its record)."""
    others = [t.user_attrs[LADDER_ATTR]["val_accuracy"][-1] for t in trials
              if t.number != number and LADDER_ATTR in t.user_attrs
              and t.state != TrialState.FAIL]
    if len(others) < n_startup_trials:
        return False
    return bool(value < np.percentile(others, 100 * (1 - keep)))


class ScreenPruner(optuna.pruners.BasePruner):
    """Prunes a trial at ``SCREEN_STEP`` if its value there is below the top ``keep`` share of
    the other trials' values there; never prunes at a later step.

    Optuna's ``PercentilePruner`` compares with complete trials only; here every trial that
    has been screened counts (pruned ones, and running ones on other workers), as the replay
    measured. Failed trials do not: a failed trial's retry reports its screen again. A trial
    queued by name (user attribute ``preset`` or ``reference``) is never pruned.
    """

    def __init__(self, keep: float = SCREEN_KEEP, n_startup_trials: int = STARTUP_TRIALS
                 ) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep, self.n_startup_trials = keep, n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.last_step != SCREEN_STEP or queued_by_name(trial):
            return False
        others = short_runs(study.get_trials(deepcopy=False), trial.number)
        if len(others) < self.n_startup_trials:
            return False
        threshold = np.percentile(others, 100 * (1 - self.keep))
        return bool(trial.intermediate_values[SCREEN_STEP] < threshold)


def short_runs(trials: Sequence[FrozenTrial], number: int) -> list[float]:
    """The short runs that trial ``number``'s is judged against: every other trial's, pruned
    and running ones included, failed ones not (a failed trial's retry reports again)."""
    judged = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return [t.intermediate_values[SCREEN_STEP] for t in trials
            if t.number != number and t.state in judged and SCREEN_STEP in t.intermediate_values]


def queued_by_name(trial: FrozenTrial) -> bool:
    """Whether the study queued ``trial`` by name (a preset, or the seed's baseline): its
    screen never prunes it."""
    return bool({PRESET_ATTR, REFERENCE_ATTR} & trial.user_attrs.keys())


def awaits_peer(trials: Sequence[FrozenTrial], number: int) -> bool:
    """Whether trial ``number``, whose short run has ended, waits before it is judged: it can
    be pruned (not queued by name), no other trial has a short run to judge it against yet,
    and another is still training its own (running, not promoted: a promoted trial skips its
    screen). Judged at once, it would go on for want of any comparison, so at the start of a
    study run by several workers the first short run to end trained its full budget whatever
    it scored."""
    if any(t.number == number and queued_by_name(t) for t in trials):
        return False
    if short_runs(trials, number):
        return False
    return any(t.number != number and t.state == TrialState.RUNNING
               and SCREEN_STEP not in t.intermediate_values
               and PROMOTED_ATTR not in t.user_attrs for t in trials)


def holds(trials: Sequence[FrozenTrial], n_trials: int, promote: int = PROMOTE) -> bool:
    """Whether a study of ``trials`` holds the trial that has just trained its short run:
    the study is cold (no trial queued by name) and at its start (no promotion queued, no
    trial judged on its short run: a resumed study is not held again), holds fewer than
    ``promote`` trials, and its total (``n_trials``) leaves room for the rest of them and for
    the promoted full run (so a small study still trains one trial in full)."""
    if any(queued_by_name(t) or PROMOTED_ATTR in t.user_attrs for t in trials):
        return False
    if _judged(trials):
        return False
    held = sum(HELD_ATTR in t.user_attrs for t in trials if t.state != TrialState.FAIL)
    return held < promote and counted(trials) + promote - held <= n_trials


def _judged(trials: Sequence[FrozenTrial]) -> bool:
    """Whether a trial was screened and judged (not held): the holding is over."""
    return any(SCREEN_STEP in t.intermediate_values and HELD_ATTR not in t.user_attrs
               for t in trials if t.state != TrialState.FAIL)


def to_promote(trials: Sequence[FrozenTrial], promote: int = PROMOTE) -> FrozenTrial | None:
    """The held trial whose full run is to be queued now, if any: the one with the best short
    run, once every held trial has ended and no more will be held (``promote`` of them, or a
    later trial was screened without being held); None if a promotion is already queued."""
    if any(PROMOTED_ATTR in t.user_attrs for t in trials):
        return None
    held = [t for t in trials if HELD_ATTR in t.user_attrs and t.state != TrialState.FAIL]
    ended = len(held) >= promote or _judged(trials)
    if not held or not ended or any(t.state != TrialState.PRUNED for t in held):
        return None
    return max(held, key=lambda t: t.intermediate_values[SCREEN_STEP])


# A trial's runs in the order it trains them: the short runs, then the full run.
RUNS = (SCREEN_ATTR, LADDER_ATTR, "history")


def epochs_trained(user_attrs: Mapping[str, Any]) -> int:
    """Every epoch a trial trained: its short runs', if screened, and its full run's."""
    return sum(len(user_attrs.get(key, {}).get("val_accuracy", [])) for key in RUNS)


def seconds_trained(user_attrs: Mapping[str, Any]) -> list[float]:
    """The seconds of every epoch a trial trained, short runs first."""
    return [s for key in RUNS for s in user_attrs.get(key, {}).get("seconds", [])]
