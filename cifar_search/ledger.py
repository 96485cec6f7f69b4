"""The study's records and their rules: the one place that decides who runs what, and what counts.

Every worker, supervisor, ``finalize`` and ``status`` reads and changes a study through a
:class:`Ledger`. It owns

* the frozen configuration (with the data fingerprint, the versions and the heartbeat),
  written once by the worker that creates the study;
* what counts toward ``--n-trials`` (:data:`COUNTED`, :func:`counted`);
* claiming a trial: the queued one first, else a new one, and only while the total is not
  reached;
* failing a trial whose worker died (stale heartbeats, a killed trial process, an interrupt)
  and re-queuing it with the same parameters and its checkpoint, at most :data:`MAX_RETRIES`
  times; a failure with no retries left is *given up*, and said so;
* the test-evaluation log, where a look at the test set is reserved before it is taken.

Each change is made under a lock held across processes and machines (:class:`StudyLock`),
so two workers never both claim, re-queue, enqueue, freeze or reserve the same thing. A
retry is re-created (not reused) exactly as Optuna's ``RetryHeartbeatStaleTrialCallback``
does, with the same system attributes, so Optuna's ``retried_trial_number`` still works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from cifar_search import storage
from cifar_search.checkpoints import CheckpointStore
from cifar_search.config import StudyConfig
from cifar_search.errors import CifarSearchError
from cifar_search.storage import despite_schema_race, set_heartbeat, sqlite_path

# Study attributes.
CONFIG_ATTR = "config"
FINGERPRINT_ATTR = "data_fingerprint"
VERSIONS_ATTR = "versions"
EVALUATIONS_ATTR = "test_evaluations"
# Trial attributes.
WORKER_ATTR = "worker"  # "host:pid" of the process that claimed the trial
FAIL_REASON_ATTR = "fail_reason"  # set on a failure that must not be retried
# Set on the trials a study queues by name, to be measured whatever they score early.
PRESET_ATTR = "preset"  # the preset's name
REFERENCE_ATTR = "reference"  # what it is the reference of ("seed baseline")
# Screening's start in a cold study (cifar_search.screening): trials held after their short
# runs, and the full run queued for the best of them (the held trial's number).
HELD_ATTR = "held"
PROMOTED_ATTR = "promoted_from"
FAILED_TRIAL_KEY = "failed_trial"  # Optuna's retry system attributes
RETRY_HISTORY_KEY = "retry_history"

MAX_RETRIES = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# What counts toward a study's --n-trials: finished, or running somewhere. A queued trial
# does not count until it is claimed, and a failed one never does (its retry will).
COUNTED = (*FINISHED, TrialState.RUNNING)


def counted(trials: Sequence[FrozenTrial]) -> int:
    """How many of ``trials`` count toward the study's total."""
    return sum(t.state in COUNTED for t in trials)


def worker_id(pid: int | None = None) -> str:
    """``host:pid`` of a process: who claimed a trial."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the failed trials this one retries, the original first."""
    return list(trial.system_attrs.get(RETRY_HISTORY_KEY, []))


def original_number(trial: FrozenTrial) -> int:
    """The number of the first trial of this one's retry chain (its own if it is no retry)."""
    return int(trial.system_attrs.get(FAILED_TRIAL_KEY, trial.number))


def retried_by(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """Failed trial number -> the number of the trial that retries it."""
    return {retry_history(t)[-1]: t.number for t in trials if retry_history(t)}


def given_up(trials: Sequence[FrozenTrial]) -> list[int]:
    """Failed trials that should have been retried but had no retries left."""
    retried = retried_by(trials)
    return [t.number for t in trials if _retryable(t, retried)
            and len(retry_history(t)) >= MAX_RETRIES]


def _retryable(trial: FrozenTrial, retried: Mapping[int, int]) -> bool:
    """A failure the ledger retries: its worker died or was stopped, and no retry exists."""
    return (trial.state == TrialState.FAIL and trial.number not in retried
            and FAIL_REASON_ATTR not in trial.user_attrs)


@dataclass(frozen=True)
class Retry:
    """What became of a failed trial: re-queued as ``retry``, or given up (``retry`` None)."""

    number: int
    retry: int | None

    def describe(self) -> str:
        if self.retry is None:
            return (f"trial {self.number} given up: it failed {MAX_RETRIES + 1} times "
                    f"(the original and {MAX_RETRIES} retries)")
        return f"trial {self.number} re-queued as trial {self.retry} with the same parameters"


RESERVED, DONE = "reserved", "done"


@dataclass(frozen=True)
class TestEvaluation:
    """One look at the test set: reserved before the test set is read, completed after.

    A reserved look that was never completed (its process died) still counts: the test set
    may have been read.
    """

    __test__ = False  # Not a pytest class.

    number: int
    forced: bool
    trial: int
    status: str = RESERVED
    reserved_at: str = ""
    worker: str = ""
    val_accuracy: float | None = None
    epochs: int | None = None
    train_images: int | None = None
    repeats: int = 1
    test_accuracy: float | None = None
    test_accuracy_std: float | None = None
    test_loss: float | None = None
    train_seconds: float | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    model_path: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    test_note: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TestEvaluation:
        known = {f.name for f in dataclasses.fields(cls)}
        # Records written before looks were reserved are completed ones.
        return cls(**{"status": DONE, **{k: v for k, v in values.items() if k in known}})

    def replace(self, **changes: Any) -> TestEvaluation:
        return dataclasses.replace(self, **changes)


def frozen_config(study: optuna.Study) -> StudyConfig | None:
    """The configuration the study's first worker froze (None for a study without one)."""
    values = study.user_attrs.get(CONFIG_ATTR)
    return None if values is None else StudyConfig.from_dict(values)


def evaluations(study: optuna.Study) -> list[TestEvaluation]:
    """The study's looks at the test set, reserved or done, in order."""
    return [TestEvaluation.from_dict(r) for r in study.user_attrs.get(EVALUATIONS_ATTR, [])]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of the packages a study's results depend on."""
    found = {}
    for name in ("cifar-search", "optuna", "keras", "tensorflow", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class StudyLock:
    """A lock on one study's records, held across processes and machines.

    SQLite: an exclusive ``flock`` on a file beside the database (SQLite is one machine only;
    see :func:`cifar_search.storage.check_local`). PostgreSQL: a transaction-scoped advisory
    lock on the study's name. Both are released when their holder dies. Re-entrant within a
    process. A read that decides a write across several Optuna calls (is this queued preset
    already there? is the config frozen? which look is next?) happens under it.
    """

    def __init__(self, engine: sa.engine.Engine, url: str, study_name: str) -> None:
        self._engine = engine
        path = sqlite_path(url)
        self._file = None if path is None else path.with_name(path.name + ".lock")
        digest = hashlib.sha256(f"cifar-search:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._local = threading.local()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with self._acquire():
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0

    @contextlib.contextmanager
    def _acquire(self) -> Iterator[None]:
        if self._file is not None:
            fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._flock(fd)
                yield
            finally:
                os.close(fd)  # Releases the lock.
            return
        with self._engine.begin() as conn:  # Released when this transaction ends.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._key})
            yield

    def _flock(self, fd: int) -> None:
        """Wait for the lock file as long as SQLite waits for its own lock."""
        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        assert self._file is not None
        storage.wait_for_lock(take, "the study's lock file", self._file, max_pause=0.02)


class Ledger:
    """One study's records, read and changed by the rules above."""

    def __init__(self, study: optuna.Study, stored: optuna.storages.RDBStorage,
                 lock: StudyLock) -> None:
        self.study = study
        self.storage = stored
        self.lock = lock
        self.study_id = stored.get_study_id_from_name(study.study_name)
        self.checkpoints = despite_schema_race(lambda: CheckpointStore(stored.engine))
        # Told what became of each stale trial this process fails (a worker logs it).
        self.on_stale: Callable[[Retry], None] = lambda retry: None

    @property
    def name(self) -> str:
        return self.study.study_name

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    # The frozen configuration.

    def config(self) -> StudyConfig | None:
        return frozen_config(self.study)

    def freeze_or_check(self, given: Mapping[str, Any], fingerprint: str
                        ) -> tuple[StudyConfig, bool]:
        """The study's configuration, and whether this call froze it: frozen now from
        ``given`` if the study has none, else the frozen one after checking that ``given``
        and the data ``fingerprint`` agree with it.

        ``given`` holds only the settings the user set; the rest take their defaults.
        """
        with self.lock():
            frozen = self.config()
            if frozen is None:
                config = StudyConfig(**given)
                self.study.set_user_attr(CONFIG_ATTR, config.to_dict())
                self.study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
                self.study.set_user_attr(VERSIONS_ATTR, versions())
            else:
                config = check_given(frozen, given)
                check_fingerprint(self.study.user_attrs.get(FINGERPRINT_ATTR), fingerprint)
        set_heartbeat(self.storage, config.heartbeat)
        return config, frozen is None

    # Queued trials.

    def enqueue(self, params: Mapping[str, Any], user_attrs: Mapping[str, Any]) -> bool:
        """Queue a warm-start trial unless the study already holds one with these parameters;
        whether it was queued. (Optuna's ``skip_if_exists`` reads, then writes: two workers
        joining at once would both queue it.)"""
        with self.lock():
            for trial in self.trials():
                if trial.system_attrs.get("fixed_params", trial.params) == dict(params):
                    return False
            self.study.enqueue_trial(dict(params), user_attrs=dict(user_attrs))
            return True

    # Claiming.

    def claim(self, n_trials: int, owner: str, *,
              promote: Callable[[list[FrozenTrial]], FrozenTrial | None] | None = None
              ) -> tuple[int, int] | None:
        """Claim the next trial for ``owner`` unless ``n_trials`` already count: a queued
        retry first, then a queued trial, else a new one. Returns its (trial id, number), or
        None.

        ``promote`` picks, from the study's trials, one whose parameters are to train in
        full now (screening's start: :func:`cifar_search.screening.to_promote`); its full
        run is queued (marked ``promoted_from``) and claimed in the same step, after any
        waiting retry. Under the claim's lock, so two workers never both queue it, and one
        lost with its worker is queued by the next claim anywhere.

        The claimed trial is RUNNING with its first heartbeat and its owner, written in one
        transaction: a worker killed a moment later leaves a trial that the heartbeat rule
        or the owner's supervisor fails and re-queues (Optuna's own claim writes the first
        heartbeat later, and a trial with none is never found stale).
        """
        with self.lock():
            self.recover()
            trials = self.trials()
            if counted(trials) >= n_trials:
                return None
            if promote is not None and (chosen := promote(trials)) is not None:
                self.study.enqueue_trial(dict(chosen.params),
                                         user_attrs={PROMOTED_ATTR: chosen.number})
                trials = self.trials()
            # Retries first (they resume from a checkpoint), then queue order.
            waiting = sorted((t for t in trials if t.state == TrialState.WAITING),
                             key=lambda t: (not retry_history(t), t.number))
            if waiting:
                trial_id = self.trial_id(waiting[0].number)
            else:
                trial_id = self.storage.create_new_trial(
                    self.study_id, template_trial=optuna.trial.create_trial(
                        state=TrialState.WAITING))
            number = self._mark_running(trial_id, owner)
            return trial_id, number

    def _mark_running(self, trial_id: int, owner: str) -> int:
        # Optuna's public API has no call that claims a queued trial together with its first
        # heartbeat and an attribute: this writes its tables through its own models.
        from optuna.storages._rdb import models

        with sa.orm.Session(self.storage.engine) as session, session.begin():
            trial = session.get(models.TrialModel, trial_id, with_for_update=True)
            if trial is None or trial.state != TrialState.WAITING:
                raise RuntimeError(f"trial id {trial_id} is not queued")  # The lock prevents it.
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.datetime.now()
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))
            session.add(models.TrialUserAttributeModel(
                trial_id=trial_id, key=WORKER_ATTR, value_json=json.dumps(owner)))
            return int(trial.number)

    # Failing and re-queuing.

    def recover(self) -> list[Retry]:
        """Fail the trials whose heartbeats went silent and re-queue every retryable failure
        that has no retry yet (also one whose re-queuing a dying worker did not finish).
        Returns what became of the stale trials failed here."""
        stale: list[int] = []
        with self.lock():
            self.storage.heartbeat_stale_trial_callback = lambda _, t: stale.append(t.number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            outcomes = self._requeue(report=set(stale))
        for outcome in outcomes:
            self.on_stale(outcome)
        return outcomes

    def release(self, owner: str) -> list[Retry]:
        """Fail and re-queue the RUNNING trials of ``owner``, a process known to be dead."""
        with self.lock():
            mine = [t for t in self.trials()
                    if t.state == TrialState.RUNNING and t.user_attrs.get(WORKER_ATTR) == owner]
            for trial in mine:
                self.fail(trial.number)
            return self._requeue(report={t.number for t in mine})

    def fail(self, number: int, reason: str | None = None) -> bool:
        """Fail RUNNING trial ``number`` (with a ``reason``, it is not retried); whether this
        call failed it (False: it was already finished, e.g. failed as stale elsewhere)."""
        trial_id = self.trial_id(number)
        try:
            if reason is not None:
                self.storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            return self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def requeue(self, numbers: set[int]) -> list[Retry]:
        """Re-queue failed trials ``numbers`` (and any other retryable failure left over)."""
        with self.lock():
            return self._requeue(report=numbers)

    def _requeue(self, report: set[int]) -> list[Retry]:
        """Re-queue every retryable failure without a retry; sweep finished checkpoints.
        Returns the outcome of the trials in ``report`` (given-up ones included)."""
        trials = self.trials()
        retried = retried_by(trials)
        outcomes = [Retry(n, r) for n, r in retried.items() if n in report]
        for trial in trials:
            if not _retryable(trial, retried):
                continue
            history = [*retry_history(trial), trial.number]
            if len(history) > MAX_RETRIES:
                if trial.number in report:
                    outcomes.append(Retry(trial.number, None))
                continue
            template = optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params,
                distributions=trial.distributions,
                user_attrs={k: v for k, v in trial.user_attrs.items() if k != WORKER_ATTR},
                system_attrs={**trial.system_attrs,
                              FAILED_TRIAL_KEY: original_number(trial),
                              RETRY_HISTORY_KEY: history})
            retry_id = self.storage.create_new_trial(self.study_id, template_trial=template)
            self.checkpoints.move(self.trial_id(trial.number), retry_id)
            if trial.number in report:
                outcomes.append(Retry(trial.number, self.storage.get_trial_number_from_id(
                    retry_id)))
        self.checkpoints.sweep(self.study_id)
        return sorted(outcomes, key=lambda o: o.number)

    # The test-evaluation log.

    def evaluations(self) -> list[TestEvaluation]:
        return evaluations(self.study)

    def check_look(self, *, force: bool) -> int:
        """The number the next look at the test set would get; refuse a second look unless
        ``force``."""
        previous = self.evaluations()
        if previous and not force:
            last = previous[-1]
            seen = (f"last: {last.test_accuracy:.4f}" if last.status == DONE else
                    f"#{last.number} was reserved at {last.reserved_at} by {last.worker} "
                    f"and not completed, so the test set may have been read")
            raise CifarSearchError(
                f"study {self.name!r} was already evaluated on the test set "
                f"({len(previous)} time(s), {seen}); use --force to evaluate again "
                f"(it will be recorded)")
        return len(previous) + 1

    def reserve_evaluation(self, trial: int, *, force: bool) -> TestEvaluation:
        """Reserve the next look at the test set, before it is read (in one locked step: two
        at once cannot both get it); refuse a second look unless ``force``."""
        with self.lock():
            number = self.check_look(force=force)
            record = TestEvaluation(number=number, forced=number > 1,
                                    trial=trial, reserved_at=now(), worker=worker_id())
            self._write_evaluations([*self.evaluations(), record])
            return record

    def complete_evaluation(self, record: TestEvaluation) -> None:
        """Write the result of a reserved look."""
        with self.lock():
            evaluations = [record if e.number == record.number else e
                           for e in self.evaluations()]
            self._write_evaluations(evaluations)

    def _write_evaluations(self, evaluations: list[TestEvaluation]) -> None:
        self.study.set_user_attr(EVALUATIONS_ATTR, [e.to_dict() for e in evaluations])


def check_given(frozen: StudyConfig, given: Mapping[str, Any]) -> StudyConfig:
    """``frozen``, after refusing any setting in ``given`` that differs from it."""
    differ = {k: (v, getattr(frozen, k)) for k, v in given.items() if getattr(frozen, k) != v}
    if differ:
        detail = ", ".join(f"{k}={new!r} (study has {old!r})" for k, (new, old) in differ.items())
        raise CifarSearchError(f"settings differ from the study's frozen configuration: {detail}")
    return frozen


def check_fingerprint(frozen: str | None, data_fingerprint: str) -> None:
    if frozen is not None and frozen != data_fingerprint:
        raise CifarSearchError(
            f"this worker's CIFAR-10 data (fingerprint {data_fingerprint}) differs from the "
            f"study's ({frozen}); point --data-dir at the same copy"
        )


def open_ledger(name: str, url: str, *, create: bool = False,
                sampler: optuna.samplers.BaseSampler | None = None) -> Ledger:
    """The ledger of study ``name`` at ``url``; with ``create``, the study is created if it
    does not exist (under the lock, so exactly one worker creates it)."""
    from cifar_search.storage import load_study, open_storage

    stored = open_storage(url, create=create)
    lock = StudyLock(stored.engine, url, name)
    with lock():
        if create:
            try:
                study = optuna.create_study(study_name=name, storage=stored,
                                            direction="maximize", sampler=sampler)
            except optuna.exceptions.DuplicatedStudyError:
                study = load_study(name, stored, sampler=sampler)
        else:
            study = load_study(name, stored, sampler=sampler)
    ledger = Ledger(study, stored, lock)
    config = ledger.config()
    if config is not None:
        set_heartbeat(stored, config.heartbeat)
    return ledger
