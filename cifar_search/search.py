"""Run (or resume, or join) a search: study, frozen configuration, data, split, optimize.

Any number of workers may call :func:`run_search` on the same study and storage; the first
one creates the study and freezes its configuration, later ones read it and check theirs.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.trial import TrialState

from cifar_search import data, storage
from cifar_search.config import StudyConfig
from cifar_search.errors import CifarSearchError
from cifar_search.report import summary_line
from cifar_search.presets import DEFAULTS as DEFAULT_PRESETS
from cifar_search.presets import get as get_preset
from cifar_search.space import BASELINE_PARAMS, params_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials that count toward a study's total: finished, or going to be.
CLAIMED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)


# The median pruner judges a trial once this many trials have finished.
MEDIAN_STARTUP_TRIALS = 5


def median_warmup(max_epochs: int) -> int:
    """The first epoch the median pruner judges: half the budget (7 of 15).

    The learning-rate schedules run over the whole budget, and the best configurations
    (augmentation, warm-up + cosine) start slowly: judged from epoch 3, the median pruner
    ended more than 0.5 points below the unpruned best in 23% of 200 replayed trial orders;
    from half the budget, in 5% (docs/PERFORMANCE.md, section 5).
    """
    return max_epochs // 2


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner: median (after 5 trials, from half the epochs), Hyperband, or none."""
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=median_warmup(config.max_epochs))
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.max_epochs)
    return optuna.pruners.NopPruner()


def make_sampler(seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Multivariate TPE with the constant liar, so parallel workers spread out their trials.

    A ``seed`` makes a single worker's choices repeatable; workers sharing a study need
    different seeds (or none), or they would propose the same trials.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          seed=seed)


def open_or_create(
    name: str, url: str, heartbeat: int, sampler_seed: int | None = None
) -> tuple[optuna.Study, bool]:
    """The study and whether this call created it (only the creator freezes its configuration)."""
    stored = storage.open_storage(url, create=True, heartbeat=heartbeat)
    try:
        study = optuna.create_study(study_name=name, storage=stored, direction="maximize",
                                    sampler=make_sampler(sampler_seed))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = storage.load_study(name, stored)
        study.sampler = make_sampler(resumed_seed(sampler_seed, len(study.trials)))
        return study, False


def resumed_seed(seed: int | None, n_trials: int) -> int | None:
    """The sampler seed of a worker joining a study that holds ``n_trials`` trials.

    The same seed again would replay the draws of the study's first random trials and
    propose their parameters a second time (a resumed or recycled worker would); mixing in
    the trial count keeps one worker's search repeatable without repeating it.
    """
    if seed is None or n_trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, n_trials]).generate_state(1)[0])


def _wait_for_config(study: optuna.Study, seconds: float = 30.0) -> StudyConfig | None:
    """A study just created by another worker gets its configuration a moment later."""
    deadline = time.monotonic() + seconds
    while (config := storage.frozen_config(study)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return config


class TrainSet(NamedTuple):
    """The 50K training images and labels with their fingerprint, loaded once per worker."""

    images: np.ndarray
    labels: np.ndarray
    fingerprint: str


def load_train_set(data_dir: str | None = None) -> TrainSet:
    """Load and fingerprint the training batches (a supervisor does it for all its trials)."""
    images, labels = data.load_train(data_dir)
    return TrainSet(images, labels, data.fingerprint(images, labels))


def split(
    labels: np.ndarray, config: StudyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The study's train and validation indices into the 50K: seeded, stratified, subsampled."""
    train_idx, val_idx = data.split_indices(labels, config.seed)
    return (data.subsample(train_idx, labels, config.train_size, config.seed),
            data.subsample(val_idx, labels, config.val_size, config.seed))


def _announce(log: Callable[[str], None]) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = "" if trial.value is None else f", validation accuracy {trial.value:.4f}"
        reason = trial.user_attrs.get("fail_reason")
        log(f"trial {trial.number} {trial.state.name.lower()}{value}"
            f"{f' ({reason})' if reason else ''}; {summary_line(study)}")

    return callback


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and so re-queue) trials whose worker stopped sending heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def total_reached(study: optuna.Study, n_trials: int) -> bool:
    """True when ``n_trials`` trials are finished or running (here or elsewhere).

    Queued trials beyond that (a warm start the total left no room for) stay queued for a
    later, larger run; a queued retry of a failed trial is run, since its failure does not
    count.
    """
    _fail_stale_trials(study)
    counted = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return len(counted) >= n_trials


def _stop_at_total(n_trials: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if total_reached(study, n_trials):
            study.stop()

    return callback


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a stopped worker leaves its trial ready for a retry."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # Not the main thread: leave signals alone.
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_search(
    name: str,
    url: str,
    *,
    given: dict[str, Any],
    n_trials: int,
    data_dir: str | None = None,
    loaded: TrainSet | None = None,
    enqueue_baseline: bool = True,
    timeout: float | None = None,
    heartbeat: int = storage.HEARTBEAT_SECONDS,
    sampler_seed: int | None = None,
    presets: Sequence[str] | None = None,
    max_trials: int | None = None,
    header: bool = True,
    log: Callable[[str], None] = print,
) -> optuna.Study:
    """Run trials on study ``name`` until it holds ``n_trials`` finished trials in total.

    A new study first runs ``presets`` (by default the best known preset for its layers,
    :data:`cifar_search.presets.DEFAULTS`), then the seed's baseline unless
    ``enqueue_baseline`` is false, then what the sampler proposes; a study that exists gets
    only the ``presets`` named here, each once. Trials running on other workers count toward
    the total. On Ctrl-C or SIGTERM the current trial is failed and re-queued with its
    parameters (it resumes from its checkpoint), and KeyboardInterrupt is raised again for
    the caller to exit. ``max_trials`` stops this process after that many trials of its own
    (:mod:`cifar_search.processes` then starts a fresh one, handing it the training set it
    ``loaded`` once; ``header`` false skips the study's opening line).
    """
    from cifar_search.objective import (  # Deferred: starts Keras.
        NonFiniteLossError,
        Objective,
        SurplusTrialError,
    )

    if n_trials < 1:
        raise CifarSearchError("--n-trials must be at least 1")
    for preset_name in presets or ():
        get_preset(preset_name)  # Refuse an unknown name before touching the storage.
    study, created = open_or_create(name, url, heartbeat, sampler_seed)
    frozen = None if created else _wait_for_config(study)
    config = storage.resolve_config(frozen, given)
    images, labels, fingerprint = loaded or load_train_set(data_dir)
    if frozen is None:
        storage.freeze(study, config, fingerprint)
    else:
        storage.check_fingerprint(study, fingerprint)
    if presets is None:
        presets = [DEFAULT_PRESETS[config.layers]] if frozen is None else []
    for preset_name in presets:
        study.enqueue_trial(params_of(get_preset(preset_name).config),
                            user_attrs={"preset": preset_name}, skip_if_exists=True)
    if frozen is None and enqueue_baseline:
        study.enqueue_trial(BASELINE_PARAMS, user_attrs={"reference": "seed baseline"},
                            skip_if_exists=True)
    study.pruner = make_pruner(config)

    train_idx, val_idx = split(labels, config)
    if header:
        log(f"study {name!r}: {finished_count(study)}/{n_trials} trials finished; training on "
            f"{len(train_idx)} images, validating on {len(val_idx)} (split seed "
            f"{config.seed}), up to {config.max_epochs} epochs per trial")
    if total_reached(study, n_trials):
        log(f"study {name!r} already has its {n_trials} trials (finished or running elsewhere)")
        return study
    objective = Objective(
        (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx]), config,
        n_trials, storage.checkpoint_store(url), log,
    )
    try:
        with _sigterm_as_interrupt():
            study.optimize(
                objective,
                n_trials=max_trials,
                timeout=timeout,
                callbacks=[_announce(log), _stop_at_total(n_trials)],
                catch=(NonFiniteLossError, SurplusTrialError),
                gc_after_trial=True,
            )
    except KeyboardInterrupt:
        _requeue_interrupted(study, objective.current, log)
        raise
    return study


def _requeue_interrupted(study: optuna.Study, number: int | None, log: Callable[[str], None]) -> None:
    """Re-queue the trial an interrupt cut short, so the next run resumes it."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == TrialState.FAIL:
        storage.retry(study, trial)
        log(f"trial {number} interrupted; re-queued with the same parameters")
