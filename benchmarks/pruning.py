"""Does pruning pay? The same search with no pruner, the median pruner and Hyperband.

Live mode: each pruner gets its own study with the same trial count, split seed and sampler
seed, run one after the other by the real CLI; the table gives total epochs trained, wall
time and the best validation accuracy. Extra arguments go to ``cifar-search search`` (e.g.
a smoke run: ``--train-size 1000 --val-size 500 --max-epochs 2 --n-trials 3``).

Replay mode (``--replay STUDY --storage URL``): a study run with ``--pruner none`` holds every
trial's full curves; each trial's curve is fed, epoch by epoch and in trial order, to each
candidate pruner (``--candidates``; by default the project's own median and Hyperband, the
objects ``search`` builds), which says where it would have stopped it. Same trials for every
pruner, so the table shows the pruners' effect alone; what a live run adds is the sampler's
reaction to pruned trials, which replay cannot show.

Usage: python benchmarks/pruning.py [--out logs/pruning] [search flags...]
       python benchmarks/pruning.py --replay pruning-none-15 \
           --storage sqlite:///docs/studies/pruning-none-15.db \
           [--best-last | --orders 200 [--keep-first 2]] \
           [--candidates median hyperband median-3 median-loss-5 percentile25-3 ...] \
           [--short-runs logs/short-3.json ... --candidates screen3-half screen-promote2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
from optuna.trial import TrialState

from cifar_search import ledger, screening, storage
from cifar_search.config import StudyConfig
from cifar_search.screening import (
    SCREEN_EPOCHS,
    SCREEN_KEEP,
    SCREEN_STEP,
    STARTUP_TRIALS,
    ScreenPruner,
)
from cifar_search.search import MEDIAN_STARTUP_TRIALS, make_pruner

PRUNERS = ("none", "screen", "median", "hyperband")


# Trials a screening candidate lets through before judging, unless its name says
# (``-startupN``): 5, as in the rule written before the first screening replay.
WRITTEN_RULE_STARTUP = 5


@dataclasses.dataclass
class Row:
    pruner: str
    trials: int
    pruned: int
    epochs: int
    seconds: float
    best: float
    # Trials this pruner stopped: (number, epoch stopped after, best val acc of the full curve).
    stopped: list[tuple[int, int, float]] = dataclasses.field(default_factory=list)
    # Every epoch trained, in order: (epochs trained so far, validation accuracy then).
    points: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def best_by(self, epochs: int) -> float:
        """The best validation accuracy seen once ``epochs`` epochs were trained."""
        return max((acc for done, acc in self.points if done <= epochs), default=float("nan"))


def run(out: Path, pruner: str, flags: list[str]) -> tuple[float, optuna.Study]:
    """Run one study to its end; return its wall time and the study."""
    url = f"sqlite:///{out / f'pruning-{pruner}.db'}"
    command = [sys.executable, "-m", "cifar_search", "search", "--study", f"pruning-{pruner}",
               "--storage", url, "--pruner", pruner, "--sampler-seed", "0", *flags]
    start = time.perf_counter()
    with (out / f"pruning-{pruner}.log").open("w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start, optuna.load_study(study_name=f"pruning-{pruner}",
                                                          storage=url)


def row_of(pruner: str, study: optuna.Study, seconds: float) -> Row:
    trials = study.get_trials(deepcopy=False)
    epochs = sum(len(t.user_attrs.get("history", {}).get("val_accuracy", [])) for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    return Row(pruner, len(trials), pruned, epochs, seconds, study.best_value)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A pruner to replay: its name in tables, how to build it for the study, what it judges
    (validation accuracy, maximised, or validation loss, minimised).

    A screening candidate (``screen`` > 0) builds no pruner: it judges each trial on a short
    run of ``screen`` epochs with a fitted schedule and keeps the top ``keep`` share. With
    ``promote`` = K, the first K trials train their short runs only, then the best of them
    trains its full budget.
    """

    name: str
    build: Callable[[StudyConfig], optuna.pruners.BasePruner] | None
    metric: str = "val_accuracy"
    screen: int = 0
    keep: float = 1.0
    startup: int = WRITTEN_RULE_STARTUP
    promote: int = 0


class ShortRun(NamedTuple):
    """A trial's short run with its schedule fitted to the short budget
    (``benchmarks/short_budgets.py``): final validation accuracy and seconds of training."""

    accuracy: float
    seconds: float


# Short runs by their number of epochs, then by trial number.
ShortRuns = Mapping[int, Mapping[int, ShortRun]]


def read_short_runs(paths: Sequence[str]) -> dict[int, dict[int, ShortRun]]:
    """The short runs written by ``benchmarks/short_budgets.py --out PATH``."""
    runs: dict[int, dict[int, ShortRun]] = {}
    for path in paths:
        saved = json.loads(Path(path).read_text())
        runs[saved["epochs"]] = {t["number"]: ShortRun(t["short"], t["short_seconds"])
                                 for t in saved["trials"]}
    return runs


_SCREEN = re.compile(r"screen(\d+)-(half|quarter)(?:-startup(\d+))?")
_PROMOTE = re.compile(r"screen-promote(\d+)")
_KIND_EPOCH = re.compile(r"(median|median-loss|percentile(\d+)|patient(\d+)-median|hyperband)"
                         r"-(\d+)")


def candidate(name: str) -> Candidate:
    """``none``, ``screen``, ``median`` or ``hyperband`` (the project's own, as ``search``
    builds them for the study's budget), or KIND-EPOCH: ``median-5`` (the median pruner
    judging from epoch 5), ``median-loss-5`` (the same on validation loss),
    ``percentile25-5`` (stops a trial below the 25th percentile of the others: Optuna's
    ``PercentilePruner(75.0)``),
    ``patient2-median-5`` (``PatientPruner`` with patience 2 around ``median-5``),
    ``hyperband-3`` (Hyperband with its first rung at epoch 3). The median and percentile
    pruners judge after ``MEDIAN_STARTUP_TRIALS`` trials, as the default does.

    ``screen3-half`` and ``screen3-quarter``: every trial first trains a short run of 3
    epochs with its schedule fitted to 3; after ``WRITTEN_RULE_STARTUP`` trials, a trial goes
    on to its full budget (from scratch) only if its short run is at least the median, or in
    the top quarter, of all earlier trials' short runs. Replaying one needs the short runs.
    ``screen2-quarter-startup2``: the same, judging from the third trial on.
    ``screen-promote3``: the project's screen, but the first 3 trials train their short runs
    only, and then the best of them trains its full budget.
    """
    if name == "screen":
        return Candidate(f"screen (the project's: {SCREEN_EPOCHS} fitted epochs, keep the top "
                         f"{SCREEN_KEEP:.0%}, {STARTUP_TRIALS} startup)", None,
                         screen=SCREEN_EPOCHS, keep=SCREEN_KEEP, startup=STARTUP_TRIALS)
    if (promote := _PROMOTE.fullmatch(name)) is not None:
        return Candidate(f"screen, the best of the first {promote[1]} short runs promoted",
                         None, screen=SCREEN_EPOCHS, keep=SCREEN_KEEP, startup=STARTUP_TRIALS,
                         promote=int(promote[1]))
    if (screen := _SCREEN.fullmatch(name)) is not None:
        keep = {"half": 0.5, "quarter": 0.25}[screen[2]]
        startup = int(screen[3] or WRITTEN_RULE_STARTUP)
        after = f", {startup} startup" if screen[3] else ""
        return Candidate(f"screen on {screen[1]} fitted epochs, keep the top {screen[2]}{after}",
                         None, screen=int(screen[1]), keep=keep, startup=startup)
    if name in PRUNERS:
        def project(config: StudyConfig) -> optuna.pruners.BasePruner:
            return make_pruner(dataclasses.replace(config, pruner=name))
        return Candidate(name, project)
    match = _KIND_EPOCH.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown candidate {name!r} (see candidate()'s docstring)")
    kind, percentile, patience, epoch = match[1], match[2], match[3], int(match[4])

    def percentile_pruner(value: float) -> optuna.pruners.BasePruner:
        return optuna.pruners.PercentilePruner(value, n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                               n_warmup_steps=epoch)

    if kind == "hyperband":
        return Candidate(f"Hyperband, first rung epoch {epoch}",
                         lambda c: optuna.pruners.HyperbandPruner(min_resource=epoch,
                                                                  max_resource=c.max_epochs))
    if percentile:  # Optuna's percentile keeps the top N%: stopping the bottom N% is 100 - N.
        return Candidate(f"below the {percentile}th percentile from epoch {epoch}",
                         lambda c: percentile_pruner(100.0 - float(percentile)))
    if patience:
        return Candidate(f"median from epoch {epoch}, patience {patience}",
                         lambda c: optuna.pruners.PatientPruner(percentile_pruner(50.0),
                                                                patience=int(patience)))
    if kind == "median-loss":
        return Candidate(f"median of validation loss from epoch {epoch}",
                         lambda c: percentile_pruner(50.0), metric="val_loss")
    return Candidate(f"median from epoch {epoch}", lambda c: percentile_pruner(50.0))


def screen_replay(chosen: Candidate, trials: Sequence[optuna.trial.FrozenTrial],
                  short: Mapping[int, ShortRun]) -> Row:
    """Replay a screening candidate with the project's :class:`ScreenPruner`: each trial
    reports its short run at the screening step and costs it, and its full run too if it is
    kept (the full run's curve as the unpruned study recorded it). A promoting candidate
    holds and promotes by the project's rule (:func:`screening.holds`,
    :func:`screening.to_promote`), the promoted trial's full run costing its epochs alone."""
    pruner = ScreenPruner(keep=chosen.keep, n_startup_trials=chosen.startup)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    row = Row(chosen.name, 0, 0, 0, 0.0, float("-inf"))

    def train_full(frozen: optuna.trial.FrozenTrial) -> float:
        history = frozen.user_attrs["history"]
        for value in history["val_accuracy"]:
            row.epochs += 1
            row.points.append((row.epochs, value))
        row.seconds += sum(history["seconds"])
        row.best = max(row.best, max(history["val_accuracy"]))
        return max(history["val_accuracy"])

    source_of: dict[int, optuna.trial.FrozenTrial] = {}
    for frozen in trials:
        accuracy = max(frozen.user_attrs["history"]["val_accuracy"])
        run = short[frozen.number]
        trial = study.ask()
        source_of[trial.number] = frozen
        # Held or not is decided before the short run is reported, as the objective does.
        held = chosen.promote and screening.holds(study.get_trials(deepcopy=False),
                                                  len(trials) + 1, chosen.promote)
        if held:
            trial.set_user_attr(ledger.HELD_ATTR, True)
        trial.report(run.accuracy, SCREEN_STEP)
        row.trials += 1
        row.epochs += chosen.screen
        row.seconds += run.seconds
        row.points.append((row.epochs, run.accuracy))  # The short run's last epoch.
        if held or trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            row.pruned += 1
            row.stopped.append((frozen.number, chosen.screen, accuracy))
        else:
            study.tell(trial, accuracy)
            train_full(frozen)
        if held and (best := screening.to_promote(study.get_trials(deepcopy=False),
                                                  chosen.promote)) is not None:
            row.trials += 1
            study.add_trial(optuna.trial.create_trial(
                value=train_full(source_of[best.number]),
                user_attrs={ledger.PROMOTED_ATTR: best.number}))
    return row


def replay(chosen: Candidate, source: optuna.Study, best_last: bool = False,
           order: Sequence[int] | None = None, short_runs: ShortRuns | None = None) -> Row:
    """Feed the finished curves of ``source`` (an unpruned study) to ``chosen``.

    ``best_last`` moves the best trial to the end: would the pruner let it finish had the
    sampler found it late, rather than as the unprunable first (warm-start) trial?
    ``order`` replays the trials in that order instead (positions in the list of complete
    trials). The replay's study has the source's name, since Hyperband assigns brackets by
    hashing the study's name and the trial's number. A screening candidate needs
    ``short_runs`` of its number of epochs.
    """
    trials = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if best_last:
        best = source.best_trial.number
        trials.sort(key=lambda t: t.number == best)
    if order is not None:
        trials = [trials[i] for i in order]
    if chosen.build is None:
        if not short_runs or chosen.screen not in short_runs:
            raise ValueError(f"{chosen.name!r} needs the study's {chosen.screen}-epoch short "
                             f"runs (benchmarks/short_budgets.py --epochs {chosen.screen})")
        return screen_replay(chosen, trials, short_runs[chosen.screen])
    pruner = chosen.build(ledger.frozen_config(source))
    direction = "minimize" if chosen.metric == "val_loss" else "maximize"
    study = optuna.create_study(study_name=source.study_name, direction=direction,
                                pruner=pruner)
    row = Row(chosen.name, 0, 0, 0, 0.0, float("-inf"))
    for frozen in trials:
        history = frozen.user_attrs["history"]
        accuracy = max(history["val_accuracy"])
        trial = study.ask()
        row.trials += 1
        for epoch, value in enumerate(history[chosen.metric], start=1):
            row.points.append((row.epochs + epoch, history["val_accuracy"][epoch - 1]))
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                row.pruned += 1
                row.stopped.append((frozen.number, epoch, accuracy))
                break
        else:
            study.tell(trial, min(history[chosen.metric]) if direction == "minimize"
                       else accuracy)
            row.best = max(row.best, accuracy)
        row.epochs += epoch
        row.seconds += sum(history["seconds"][:epoch])
    return row


def random_orders(source: optuna.Study, orders: int, keep_first: int = 0, seed: int = 0
                  ) -> list[list[int]]:
    """``orders`` seeded random orders of the study's complete trials, the first
    ``keep_first`` kept first."""
    n = len(source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    rng = np.random.default_rng(seed)
    kept = list(range(keep_first))
    return [kept + list(keep_first + rng.permutation(n - keep_first)) for _ in range(orders)]


def anytime(source: optuna.Study, candidates: list[Candidate], orders: int,
            checkpoints: Sequence[int], keep_first: int = 0, seed: int = 0,
            short_runs: ShortRuns | None = None) -> None:
    """The first epochs of a search, as a head-to-head race sees them: the best validation
    accuracy each candidate has seen once it has trained ``checkpoints`` epochs, over the
    same random orders of the study's trials (TPE's first 10 trials are random draws; the
    study's own pool also holds its warm start and TPE's proposals).

    Prints the mean and median over the orders, and the share of orders in which the
    candidate is ahead of or level with every other candidate.
    """
    permutations = random_orders(source, orders, keep_first, seed)
    best = np.array([[[replay(c, source, order=o, short_runs=short_runs).best_by(e)
                       for e in checkpoints] for o in permutations] for c in candidates])
    print("| pruner | " + " | ".join(f"best by {e} epochs: mean, median, leads or ties"
                                      for e in checkpoints) + " |")
    print("| --- |" + " ---: |" * len(checkpoints))
    for k, chosen in enumerate(candidates):
        leads = (best[k] >= np.delete(best, k, axis=0).max(axis=0)).mean(axis=0)
        cells = [f"{100 * np.nanmean(best[k, :, j]):.2f}%, {100 * np.nanmedian(best[k, :, j]):.2f}%"
                 f", {leads[j]:.0%}" for j in range(len(checkpoints))]
        print(f"| {chosen.name} | " + " | ".join(cells) + " |")


def shuffled(source: optuna.Study, candidates: list[Candidate], orders: int,
             keep_first: int = 0, seed: int = 0, short_runs: ShortRuns | None = None) -> None:
    """Replay every candidate on the same ``orders`` random orders of the trials (the first
    ``keep_first`` stay first, as a warm start would); print how many epochs each saves and
    how often it keeps the best within 0.5 points.

    Where the sampler finds the best configuration is chance: one order (or two) says little
    about a pruner, many orders show how much it saves and how often it loses the best.
    """
    permutations = random_orders(source, orders, keep_first, seed)
    print("| pruner | epochs saved: mean | min | max | best kept (within 0.5 points) | "
          "best lost: mean points | worst |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    none = replay(candidate("none"), source)  # Every order trains the same epochs.
    for chosen in candidates:
        rows = [replay(chosen, source, order=o, short_runs=short_runs) for o in permutations]
        saved = np.array([1 - r.epochs / none.epochs for r in rows])
        lost = np.array([100 * (none.best - r.best) for r in rows])
        print(f"| {chosen.name} | {100 * saved.mean():.1f}% | {100 * saved.min():.0f}% | "
              f"{100 * saved.max():.0f}% | {np.mean(lost <= 0.5):.0%} of {orders} | "
              f"{lost.mean():.2f} | {lost.max():.2f} |")


def print_table(rows: list[Row], seconds_heading: str) -> None:
    base = rows[0]
    print(f"| pruner | trials | pruned | epochs trained | epochs saved | {seconds_heading} | "
          "best val acc | vs none (points) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r.pruner} | {r.trials} | {r.pruned} | {r.epochs} | "
              f"{100 * (1 - r.epochs / base.epochs):.0f}% | {r.seconds:.0f} | {r.best:.4f} | "
              f"{100 * (r.best - base.best):+.2f} |")
    for r in rows:
        if r.stopped:
            print(f"\n{r.pruner} stopped (trial: after epoch, best val acc it would have reached): "
                  + ", ".join(f"{n}: {e}, {v:.4f}" for n, e, v in r.stopped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="logs/pruning")
    parser.add_argument("--replay", metavar="STUDY", help="replay this unpruned study's curves")
    parser.add_argument("--storage", help="storage URL of the --replay study")
    parser.add_argument("--best-last", action="store_true",
                        help="replay with the study's best trial moved to the end")
    parser.add_argument("--candidates", nargs="+", default=list(PRUNERS[1:]), metavar="NAME",
                        help="pruners to replay: median, hyperband (the project's), or "
                             "KIND-EPOCH such as median-5, median-loss-5, percentile25-3, "
                             "patient2-median-3, hyperband-3, screen3-half (with --short-runs)")
    parser.add_argument("--short-runs", nargs="+", default=[], metavar="FILE",
                        help="the study's short runs (benchmarks/short_budgets.py --out FILE), "
                             "for the screening candidates")
    parser.add_argument("--orders", type=int, metavar="N",
                        help="replay on N random orders of the trials (seeded) and summarise")
    parser.add_argument("--anytime", nargs="+", type=int, metavar="EPOCHS",
                        help="with --orders: the best validation accuracy each candidate has "
                             "seen by these numbers of epochs trained, instead of the savings")
    parser.add_argument("--keep-first", type=int, default=0, metavar="K",
                        help="with --orders: the first K trials (the warm start) stay first")
    args, flags = parser.parse_known_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.replay:
        source = storage.load_study(args.replay, storage.open_storage(args.storage))
        if ledger.frozen_config(source).pruner != "none":
            parser.error(f"{args.replay!r} was pruned: replay needs full curves (--pruner none)")
        short_runs = read_short_runs(args.short_runs)
        try:
            candidates = [candidate(name) for name in args.candidates]
            for chosen in candidates:  # A screen without its short runs: refused at once.
                replay(chosen, source, short_runs=short_runs)
        except ValueError as error:
            parser.error(str(error))
        if args.orders and args.anytime:
            anytime(source, candidates, args.orders, args.anytime, args.keep_first,
                    short_runs=short_runs)
            return
        if args.orders:
            shuffled(source, candidates, args.orders, args.keep_first, short_runs=short_runs)
            return
        rows = [replay(c, source, best_last=args.best_last, short_runs=short_runs)
                for c in [candidate("none"), *candidates]]
        print_table(rows, "seconds in those epochs")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pruner in PRUNERS:
        seconds, study = run(out, pruner, flags)
        rows.append(row_of(pruner, study, seconds))
    print_table(rows, "wall time (s)")


if __name__ == "__main__":
    main()
