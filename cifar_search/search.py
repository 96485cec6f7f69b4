"""Run (or resume, or join) a search: validate, prepare the study, enqueue warm starts, optimize.

Any number of workers may call :func:`run_search` on the same study and storage; the first
one creates the study and freezes its configuration, later ones read it and check theirs.
Which trial a worker runs, what counts toward the total and what happens to a trial whose
worker dies is the ledger's business (:mod:`cifar_search.ledger`); this module trains.
"""

from __future__ import annotations

import gc
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import optuna
from optuna.trial import TrialState

from cifar_search import data, screening
from cifar_search.config import RANDOM_TRIALS, StudyConfig
from cifar_search.errors import CifarSearchError, StudyLockedError
from cifar_search.interrupts import Interrupts
from cifar_search.ledger import (
    FINISHED,
    HELD_ATTR,
    PRESET_ATTR,
    PROMOTED_ATTR,
    REFERENCE_ATTR,
    Ledger,
    Retry,
    counted,
    open_ledger,
    original_number,
    worker_id,
)
from cifar_search.presets import DEFAULTS as DEFAULT_PRESETS
from cifar_search.presets import get as get_preset
from cifar_search.report import summary_line
from cifar_search.space import BASELINE_PARAMS, params_of

if TYPE_CHECKING:
    from cifar_search.objective import Objective

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
    """The study's pruner: screening (:mod:`cifar_search.screening`, for budgets where it
    pays), median (after 5 trials, from half the epochs), Hyperband, or none."""
    if screening.screens(config):
        return screening.ScreenPruner(keep=screening.screen_keep(config))
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=median_warmup(config.max_epochs))
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.max_epochs)
    return optuna.pruners.NopPruner()


def make_sampler(seed: int | None = None, random_trials: int = RANDOM_TRIALS
                 ) -> optuna.samplers.BaseSampler:
    """Multivariate TPE with the constant liar, so parallel workers spread out their trials;
    its first ``random_trials`` trials (finished or pruned) are drawn at random."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=random_trials, seed=seed)


def trial_seed(base: int, number: int) -> int:
    """The sampler's seed for trial ``number`` of a study whose sampler seed is ``base``.

    Seeding each trial's draw by its number (claimed by one worker only) makes a search
    repeatable (two runs of one command propose the same first trials) while workers
    sharing a study, or a resumed worker, never draw alike.
    """
    return int(np.random.SeedSequence([base, number]).generate_state(1)[0])


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


def validate(given: Mapping[str, Any], n_trials: int, presets: Sequence[str] | None,
             sampler_seed: int | None = None, random_trials: int = RANDOM_TRIALS) -> None:
    """Refuse bad settings before anything is read or written."""
    if n_trials < 1:
        raise CifarSearchError("--n-trials must be at least 1")
    if sampler_seed is not None and not 0 <= sampler_seed < 2**32:
        raise CifarSearchError("sampler_seed must be an integer from 0 to 2**32 - 1")
    if random_trials < 0:
        raise CifarSearchError("random_trials must be at least 0")
    StudyConfig(**given)
    for preset_name in presets or ():
        get_preset(preset_name)


def prepare_study(
    name: str, url: str, given: Mapping[str, Any], fingerprint: str,
) -> tuple[Ledger, StudyConfig, bool]:
    """Create or join the study: its ledger, its configuration, and whether this call froze
    it (so this worker is the study's first)."""
    ledger = open_ledger(name, url, create=True)
    config, froze = ledger.freeze_or_check(given, fingerprint)
    ledger.study.pruner = make_pruner(config)
    return ledger, config, froze


def enqueue_warm_starts(ledger: Ledger, config: StudyConfig, *, first: bool,
                        presets: Sequence[str] | None, baseline: bool) -> None:
    """Queue the named presets (for the study's first worker, by default the best one for its
    layers) and, in a new study, the seed's baseline; each at most once per study."""
    if presets is None:
        presets = [DEFAULT_PRESETS[config.layers]] if first else []
    for preset_name in presets:
        ledger.enqueue(params_of(get_preset(preset_name).config), {PRESET_ATTR: preset_name})
    if first and baseline:
        ledger.enqueue(BASELINE_PARAMS, {REFERENCE_ATTR: "seed baseline"})


def run_search(
    name: str,
    url: str,
    *,
    given: Mapping[str, Any],
    n_trials: int,
    data_dir: str | None = None,
    loaded: TrainSet | None = None,
    enqueue_baseline: bool = True,
    timeout: float | None = None,
    sampler_seed: int | None = None,
    random_trials: int = RANDOM_TRIALS,
    presets: Sequence[str] | None = None,
    max_trials: int | None = None,
    header: bool = True,
    log: Callable[[str], None] = print,
) -> optuna.Study:
    """Run trials on study ``name`` until it holds ``n_trials`` counted trials in total.

    A new study first runs ``presets`` (by default the best known preset for its layers,
    :data:`cifar_search.presets.DEFAULTS`), then the seed's baseline unless
    ``enqueue_baseline`` is false, then what the sampler proposes; a study that exists gets
    only the ``presets`` named here, each once. Trials running on other workers count toward
    the total. The sampler draws the study's first ``random_trials`` trials at random. On
    Ctrl-C or SIGTERM the current trial is failed and re-queued with its
    parameters (it resumes from its checkpoint), and KeyboardInterrupt is raised again for
    the caller to exit. ``max_trials`` stops this process after that many trials of its own
    (:mod:`cifar_search.processes` then starts a fresh one, handing it the training set it
    ``loaded`` once; ``header`` false skips the study's opening line).
    """
    validate(given, n_trials, presets, sampler_seed, random_trials)
    images, labels, fingerprint = loaded or load_train_set(data_dir)
    ledger, config, first = prepare_study(name, url, given, fingerprint)
    ledger.on_stale = _stale_logger(ledger, log)
    enqueue_warm_starts(ledger, config, first=first, presets=presets, baseline=enqueue_baseline)

    train_idx, val_idx = split(labels, config)
    if header:
        finished = sum(t.state in FINISHED for t in ledger.trials())
        log(f"study {name!r}: {finished}/{n_trials} trials finished; training on "
            f"{len(train_idx)} images, validating on {len(val_idx)} (split seed "
            f"{config.seed}), up to {config.max_epochs} epochs per trial")
        if config.pruner in ("screen", "ladder") and not screening.screens(config):
            log(f"screening needs more than {2 * screening.SCREEN_EPOCHS} epochs per trial to "
                f"pay: no trial of this study is pruned")
        elif config.pruner == "ladder" and not screening.climbs(config):
            log(f"the ladder's second rung needs more than {2 * screening.LADDER_EPOCHS} "
                f"epochs per trial to pay: trials are screened on "
                f"{screening.SCREEN_EPOCHS} epochs only")
    from cifar_search.objective import Objective  # Deferred: starts Keras.

    objective = Objective((images[train_idx], labels[train_idx]),
                          (images[val_idx], labels[val_idx]), config, ledger.checkpoints,
                          ledger.study_id, log, n_trials)
    optimize(ledger, objective, n_trials=n_trials, max_trials=max_trials, timeout=timeout,
             sampler_seed=config.seed if sampler_seed is None else sampler_seed,
             random_trials=random_trials, log=log)
    return ledger.study


class Heartbeat:
    """Records the trial's heartbeat every interval, in a thread, while training runs."""

    def __init__(self, stored: optuna.storages.RDBStorage, trial_id: int) -> None:
        self._stored, self._trial_id = stored, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._stored.heartbeat_interval):
            try:
                self._stored.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 (a missed beat; the next one may get through)
                pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def optimize(ledger: Ledger, objective: Objective, *, n_trials: int,
             max_trials: int | None = None, timeout: float | None = None,
             sampler_seed: int = 0, random_trials: int = RANDOM_TRIALS,
             log: Callable[[str], None] = print) -> None:
    """Claim and train trials until the study's total is claimed, ``max_trials`` of this
    process's own have run, or ``timeout`` seconds have passed; each trial's proposal is
    seeded by ``sampler_seed`` and its number (:func:`trial_seed`), by
    :func:`make_sampler` with ``random_trials``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    owner = worker_id()
    interrupts = Interrupts()
    ran = 0
    with interrupts.installed():
        while max_trials is None or ran < max_trials:
            interrupts.check()
            if deadline is not None and time.monotonic() >= deadline:
                return
            claimed = ledger.claim(n_trials, owner, promote=screening.to_promote)
            if claimed is None:
                return
            ran += 1
            try:
                interrupts.check()
                ledger.study.sampler = make_sampler(trial_seed(sampler_seed, claimed[1]),
                                                    random_trials)
                _train(ledger, objective, *claimed, interrupts=interrupts, log=log)
            except BaseException as exc:
                _abandon(ledger, claimed[1], exc, log)
                raise
            gc.collect()
        interrupts.check()


def _train(ledger: Ledger, objective: Objective, trial_id: int, number: int, *,
           interrupts: Interrupts, log: Callable[[str], None]) -> None:
    """Train claimed trial ``number`` and tell the study how it ended."""
    from cifar_search.objective import NonFiniteLossError

    study = ledger.study
    trial = optuna.Trial(study, trial_id)  # The sampler proposes here.
    claimed = ledger.storage.get_trial(trial_id)
    key = original_number(claimed)
    if (promoted := claimed.user_attrs.get(PROMOTED_ATTR)) is not None:
        log(f"trial {number} trains trial {promoted}'s parameters in full: the best short run "
            f"of the trials held")
    value, state, reason = None, TrialState.COMPLETE, None
    try:
        with Heartbeat(ledger.storage, trial_id):
            value = objective(trial, trial_id, key, between_batches=interrupts.check)
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except NonFiniteLossError as exc:
        state, reason = TrialState.FAIL, str(exc)
    except optuna.exceptions.UpdateFinishedTrialError:
        _taken_over(ledger, number, log)
        return
    if state == TrialState.FAIL:
        told = ledger.fail(number, reason)
    else:
        try:
            told = study.tell(trial, value, state=state, skip_if_finished=True).state == state
        except optuna.exceptions.UpdateFinishedTrialError:
            told = False  # Failed as stale by another worker between two reads.
    if not told:
        _taken_over(ledger, number, log)
        return
    ledger.checkpoints.delete(trial_id)
    frozen = ledger.storage.get_trial(trial_id)
    shown = "" if frozen.value is None else f", validation accuracy {frozen.value:.4f}"
    held = HELD_ATTR in frozen.user_attrs
    log(f"trial {number} {'held' if held else frozen.state.name.lower()}{shown}"
        f"{f' ({reason})' if reason else ''}; {summary_line(study)}")
    from cifar_search.dashboard import write_notes  # Deferred: the supervisor needs none.

    with ledger.lock():  # One writer at a time: a note is several rows.
        write_notes(study, trial, frozen.user_attrs.get("history", {}))


def _stale_logger(ledger: Ledger, log: Callable[[str], None]) -> Callable[[Retry], None]:
    def announce(outcome: Retry) -> None:
        log(f"trial {outcome.number} sent no heartbeat for {ledger.storage.grace_period} s "
            f"(its worker died or stopped); {outcome.describe()}")

    return announce


def _taken_over(ledger: Ledger, number: int, log: Callable[[str], None]) -> None:
    log(f"trial {number} was failed by another worker while this one was silent for more "
        f"than {ledger.storage.grace_period} s (stopped or cut off); its retry runs there, "
        f"and this worker goes on")


def _abandon(ledger: Ledger, number: int, exc: BaseException,
             log: Callable[[str], None]) -> None:
    """Leave no RUNNING trial behind: fail ``number`` and re-queue it after an interrupt or
    a study locked by another process (neither is the trial's doing), or record the error
    that stopped it."""
    if isinstance(exc, (KeyboardInterrupt, StudyLockedError)):
        if ledger.fail(number):
            for outcome in ledger.requeue({number}):
                log(f"trial {number} interrupted; {outcome.describe()}")
    else:
        ledger.fail(number, f"error: {exc!r}")


def study_done(name: str, url: str, n_trials: int,
               log: Callable[[str], None] = print) -> bool:
    """Whether the study's total is claimed (stale trials are failed and re-queued first)."""
    ledger = open_ledger(name, url)
    ledger.on_stale = _stale_logger(ledger, log)
    try:
        ledger.recover()
        return counted(ledger.trials()) >= n_trials
    finally:
        ledger.storage.engine.dispose()


def release(name: str, url: str, pid: int, how: str, log: Callable[[str], None]) -> None:
    """Fail and re-queue the trial of dead trial process ``pid``, saying how it died."""
    ledger = open_ledger(name, url)
    try:
        outcomes = ledger.release(worker_id(pid))
        for outcome in outcomes:
            log(f"trial process {pid} {how}; {outcome.describe()}")
        if not outcomes:
            log(f"trial process {pid} {how}; it held no running trial")
    finally:
        ledger.storage.engine.dispose()
