"""The ledger's rules under concurrency, on SQLite and the real PostgreSQL, without training.

Two "workers" are two threads, each with its own storage, engine and lock (as two processes
would have). Where a bug is a race, a barrier holds the first worker between its read and
its write until the second has read too (or 1 s has passed, when a lock keeps the second
out): that interleaving is what two real processes hit now and then, made certain.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from cifar_search import checkpoints, cli, screening, storage
from cifar_search import ledger as ledger_module
from cifar_search.config import StudyConfig
from cifar_search.errors import EXIT_LOCKED, CifarSearchError, StudyLockedError
from cifar_search.interrupts import Interrupts
from cifar_search.ledger import (
    DONE,
    HELD_ATTR,
    MAX_RETRIES,
    PROMOTED_ATTR,
    WORKER_ATTR,
    Ledger,
    counted,
    given_up,
    open_ledger,
)

PARAMS = {"optimizer": "adam", "learning_rate": 1e-3}
DISTRIBUTIONS = {"optimizer": CategoricalDistribution(["adam", "sgd"]),
                 "learning_rate": FloatDistribution(1e-4, 1e-1, log=True)}


def _ledger(url: str, name: str, heartbeat: int = 10) -> Ledger:
    ledger = open_ledger(name, url, create=True)
    ledger.freeze_or_check({"heartbeat": heartbeat}, "fingerprint")
    return ledger


def _params(trial: optuna.trial.FrozenTrial) -> dict:
    """What a trial trains: its parameters, or those it was queued with."""
    return trial.system_attrs.get("fixed_params", trial.params)


def _both(first: Callable[[], object], second: Callable[[], object]) -> list[object]:
    """Run two workers at once; their results (or exceptions), in order."""
    results: list[object] = [None, None]

    def run(i: int, body: Callable[[], object]) -> None:
        try:
            results[i] = body()
        except Exception as exc:  # noqa: BLE001 (returned to the test)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, b)) for i, b in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.fixture
def interleave(monkeypatch):
    """Patch ``owner.method`` so that each caller waits (up to 1 s) for the other after it."""
    def patch(owner: object, method: str) -> None:
        barrier = threading.Barrier(2, timeout=1.0)
        original = getattr(owner, method)

        def waiting(*args, **kwargs):
            result = original(*args, **kwargs)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # The other worker is kept out by a lock: go on alone.
            return result

        monkeypatch.setattr(owner, method, waiting)

    return patch


def test_claiming_a_queued_trial_is_atomic_on_sqlite(tmp_path, interleave):
    """Optuna pops a queued trial by reading it as WAITING, then writing RUNNING; on SQLite
    the read was outside the write's transaction, so two workers both claimed it."""
    url = f"sqlite:///{tmp_path}/pop.db"
    study = optuna.create_study(study_name="pop", storage=storage.open_storage(url, create=True))
    study.enqueue_trial(PARAMS)
    trial_id = study.get_trials()[0]._trial_id
    interleave(optuna.storages.RDBStorage, "check_trial_is_updatable")
    first, second = storage.open_storage(url), storage.open_storage(url)
    results = _both(lambda: first.set_trial_state_values(trial_id, TrialState.RUNNING),
                    lambda: second.set_trial_state_values(trial_id, TrialState.RUNNING))
    assert sorted(results) == [False, True], results


def test_workers_claim_each_trial_once_and_stop_at_the_total(storage_url, study_name):
    ledgers = [_ledger(storage_url, study_name) for _ in range(2)]
    ledgers[0].enqueue(PARAMS, {"preset": "x"})
    claims: list[list[tuple[int, int]]] = [[], []]

    def worker(i: int) -> None:
        while (claimed := ledgers[i].claim(6, f"w{i}")) is not None:
            claims[i].append(claimed)

    _both(lambda: worker(0), lambda: worker(1))
    numbers = [n for c in claims for _, n in c]
    assert sorted(numbers) == list(range(6)), claims
    trials = ledgers[0].trials()
    assert counted(trials) == 6 and all(t.state == TrialState.RUNNING for t in trials)
    owners = {t.number: t.user_attrs[WORKER_ATTR] for t in trials}
    assert {owners[n] for _, n in claims[0]} <= {"w0"}
    assert trials[0].system_attrs["fixed_params"] == PARAMS  # The queued trial went first.


def test_a_claim_writes_its_first_heartbeat_so_a_worker_killed_at_once_is_found_stale(
        storage_url, study_name):
    """Optuna's own claim records no heartbeat; its stale check skips a trial without one,
    so a worker killed between claiming and its first heartbeat left a trial RUNNING for
    ever."""
    ledger = _ledger(storage_url, study_name, heartbeat=1)
    ledger.enqueue(PARAMS, {})
    _, number = ledger.claim(5, "dead:1")  # And then nothing: the worker died.
    time.sleep(4.5)  # Past three 1-second heartbeats (SQLite keeps whole seconds).
    other = _ledger(storage_url, study_name, heartbeat=1)
    (outcome,) = other.recover()
    assert outcome.number == number and outcome.retry is not None
    retry = other.trials()[outcome.retry]
    assert retry.state == TrialState.WAITING and _params(retry) == PARAMS


def test_a_stale_trial_is_failed_and_requeued_once_by_two_workers(
        storage_url, study_name, interleave):
    ledger = _ledger(storage_url, study_name, heartbeat=1)
    ledger.enqueue(PARAMS, {})
    ledger.claim(5, "dead:1")
    time.sleep(4.5)
    interleave(optuna.storages.RDBStorage, "_get_stale_trial_ids")
    first, second = (_ledger(storage_url, study_name, heartbeat=1) for _ in range(2))
    _both(first.recover, second.recover)
    states = [t.state for t in first.trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING], states


def test_a_preset_is_queued_once_by_two_workers_joining_together(
        storage_url, study_name, interleave):
    first, second = (_ledger(storage_url, study_name) for _ in range(2))
    interleave(Ledger, "trials")
    results = _both(lambda: first.enqueue(PARAMS, {"preset": "p"}),
                    lambda: second.enqueue(PARAMS, {"preset": "p"}))
    assert sorted(results) == [False, True]
    assert len(first.trials()) == 1


def test_two_workers_claiming_after_held_trials_queue_one_promotion_and_one_takes_it(
        storage_url, study_name, interleave):
    first, second = (_ledger(storage_url, study_name) for _ in range(2))
    for value, optimizer in ((0.4, "sgd"), (0.6, "adam")):
        first.study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params={**PARAMS, "optimizer": optimizer},
            distributions=DISTRIBUTIONS,
            intermediate_values={screening.SCREEN_STEP: value}, user_attrs={HELD_ATTR: True}))
    interleave(Ledger, "trials")
    results = _both(lambda: first.claim(5, "w1", promote=screening.to_promote),
                    lambda: second.claim(5, "w2", promote=screening.to_promote))
    assert sorted(number for _, number in results) == [2, 3]
    promoted = [t for t in first.trials() if PROMOTED_ATTR in t.user_attrs]
    assert [(t.number, _params(t), t.user_attrs[PROMOTED_ATTR]) for t in promoted] == [
        (2, PARAMS, 1)]
    assert [t.state for t in first.trials()[2:]] == [TrialState.RUNNING] * 2


def test_a_waiting_retry_is_claimed_before_the_promotion_it_waits_beside(
        storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    for value in (0.4, 0.6):
        ledger.study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params=PARAMS, distributions=DISTRIBUTIONS,
            intermediate_values={screening.SCREEN_STEP: value}, user_attrs={HELD_ATTR: True}))
    _, number = ledger.claim(5, "dead:1")  # Without promote: another trial, then it dies.
    ledger.fail(number)
    [retry] = ledger.requeue({number})
    assert ledger.claim(5, "w", promote=screening.to_promote)[1] == retry.retry == 3
    assert ledger.claim(5, "w", promote=screening.to_promote)[1] == 4
    trials = ledger.trials()
    assert [PROMOTED_ATTR in t.user_attrs for t in trials] == [False] * 4 + [True]
    assert trials[4].user_attrs[PROMOTED_ATTR] == 1


def test_the_first_worker_freezes_and_a_joiner_sees_it_at_once(storage_url, study_name):
    results = _both(lambda: open_ledger(study_name, storage_url, create=True).freeze_or_check(
                        {"heartbeat": 2}, "fingerprint"),
                    lambda: open_ledger(study_name, storage_url, create=True).freeze_or_check(
                        {"heartbeat": 3}, "fingerprint"))
    frozen = [config for config, froze in (r for r in results if isinstance(r, tuple))
              if froze]
    refused = [r for r in results if isinstance(r, CifarSearchError)]
    assert len(frozen) == 1 and len(refused) == 1, results
    assert "heartbeat=" in str(refused[0]) and "(study has" in str(refused[0])
    joiner = open_ledger(study_name, storage_url)
    assert joiner.storage.heartbeat_interval == frozen[0].heartbeat
    assert joiner.storage.grace_period == 3 * frozen[0].heartbeat


def test_a_dead_trial_process_is_released_at_once_with_its_checkpoint(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    ledger.enqueue(PARAMS, {})
    trial_id, _number = ledger.claim(5, "host:41")
    assert ledger.checkpoints.save(trial_id, ledger.study_id, "h", 2, b"model")
    (outcome,) = ledger.release("host:41")
    assert "re-queued as trial 1" in outcome.describe()
    failed, retry = ledger.trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert _params(retry) == PARAMS and WORKER_ATTR not in retry.user_attrs
    assert ledger.checkpoints.owners(ledger.study_id) == {ledger.trial_id(1): (2, "h")}
    assert not ledger.checkpoints.save(trial_id, ledger.study_id, "h", 3, b"late"), \
        "a failed trial's worker must not overwrite its retry's checkpoint"


def test_a_trial_out_of_retries_is_given_up_never_requeued(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    ledger.enqueue(PARAMS, {})
    outcomes = []
    for attempt in range(MAX_RETRIES + 1):
        trial_id, _ = ledger.claim(5, f"host:{attempt}")
        ledger.checkpoints.save(trial_id, ledger.study_id, "h", 1, b"model")
        outcomes += ledger.release(f"host:{attempt}")
    *requeued, last = outcomes
    assert [o.retry for o in requeued] == [1, 2, 3]
    assert last.retry is None and "given up" in last.describe()
    assert "re-queued" not in last.describe()
    trials = ledger.trials()
    assert given_up(trials) == [MAX_RETRIES]
    assert not [t for t in trials if t.state == TrialState.WAITING]
    assert ledger.checkpoints.owners(ledger.study_id) == {}, "its checkpoint is swept"
    assert ledger.recover() == [], "a given-up trial is not reported again"


def test_a_requeue_cut_short_is_finished_by_the_next_worker(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    ledger.enqueue(PARAMS, {})
    _, number = ledger.claim(5, "host:1")
    ledger.fail(number)  # The worker died right after failing its trial.
    assert [t.state for t in ledger.trials()] == [TrialState.FAIL]
    ledger.recover()
    assert [t.state for t in ledger.trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_a_failure_with_a_reason_is_not_retried(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    _, number = ledger.claim(5, "host:1")
    assert ledger.fail(number, "non-finite loss at epoch 1")
    assert ledger.recover() == [] and len(ledger.trials()) == 1
    assert given_up(ledger.trials()) == []


def test_two_looks_at_the_test_set_at_once_only_one_is_reserved(
        storage_url, study_name, interleave):
    first, second = (_ledger(storage_url, study_name) for _ in range(2))
    interleave(Ledger, "evaluations")
    results = _both(lambda: first.reserve_evaluation(0, force=False),
                    lambda: second.reserve_evaluation(0, force=False))
    refused = [r for r in results if isinstance(r, CifarSearchError)]
    assert len(refused) == 1, results
    assert "not completed, so the test set may have been read" in str(refused[0])
    (record,) = first.evaluations()
    assert record.number == 1 and record.status != DONE and not record.forced


def test_a_reserved_look_counts_until_forced(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    record = ledger.reserve_evaluation(3, force=False)  # Then the process died.
    with pytest.raises(CifarSearchError, match="use --force"):
        ledger.check_look(force=False)
    forced = ledger.reserve_evaluation(3, force=True)
    assert (forced.number, forced.forced) == (2, True)
    ledger.complete_evaluation(forced.replace(status=DONE, test_accuracy=0.5))
    assert [(e.number, e.status) for e in ledger.evaluations()] == [(1, record.status),
                                                                   (2, DONE)]


def test_old_evaluation_records_read_as_done():
    old = {"number": 1, "forced": False, "trial": 2, "test_accuracy": 0.8, "extra": "x"}
    record = ledger_module.TestEvaluation.from_dict(old)
    assert record.status == DONE and record.test_accuracy == 0.8
    assert json.loads(json.dumps(record.to_dict()))["trial"] == 2


def test_sqlite_on_a_network_filesystem_is_refused(tmp_path):
    mounts = (f"/dev/vda / ext4 rw 0 0\nserver:/home {tmp_path} nfs4 rw 0 0\n")
    with pytest.raises(CifarSearchError, match="network filesystem.*PostgreSQL"):
        storage.check_local(tmp_path / "studies" / "x.db", mounts)
    storage.check_local(tmp_path / "x.db", "/dev/vda / ext4 rw 0 0\n")  # Local: fine.


@pytest.fixture
def short_lock_wait(monkeypatch):
    """Workers give up on a locked study after 1 s instead of 60."""
    monkeypatch.setattr(storage, "SQLITE_TIMEOUT_SECONDS", 1)


def test_a_sqlite_study_locked_by_a_stopped_process_is_one_line_naming_the_file(
        tmp_path, short_lock_wait, capsys):
    """A process frozen inside a transaction (Ctrl-Z, SIGSTOP) keeps SQLite's write lock:
    others give up after the busy timeout with one line, not a traceback, and exit 75."""
    url = f"sqlite:///{tmp_path}/x.db"
    _ledger(url, "x").study.enqueue_trial(PARAMS)
    frozen = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    frozen.execute("BEGIN IMMEDIATE")  # What the stopped process holds.
    try:
        start = time.monotonic()
        with pytest.raises(StudyLockedError, match=f"'fuser {tmp_path}/x.db'"):
            _ledger(url, "x").trials()
        assert time.monotonic() - start < 10
        assert cli.main(["status", "--study", "x", "--storage", url]) == EXIT_LOCKED
    finally:
        frozen.rollback()
        frozen.close()
    err = capsys.readouterr().err
    assert err.startswith("cifar-search: error: the study's database stayed locked by another "
                          "process for 1 s") and err.count("\n") == 1, err
    assert counted(_ledger(url, "x").trials()) == 0  # Free again, nothing lost.


def test_a_worker_waits_for_another_creating_the_same_sqlite_study(tmp_path):
    """SQLite refuses to switch a file to WAL at once, without its busy wait, while another
    connection writes to it (found by the 16th run in a row of
    test_three_workers_share_one_total: a traceback from the third worker)."""
    path = tmp_path / "x.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE t (i INTEGER)")  # Still in rollback mode, writing.
    threading.Timer(0.5, other.execute, ("COMMIT",)).start()
    start = time.monotonic()
    engine = storage.open_engine(f"sqlite:///{path}", create=True)
    assert time.monotonic() - start >= 0.4
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    other.close()


def test_the_study_lock_file_held_by_a_stopped_process_is_given_up_on(
        tmp_path, short_lock_wait):
    """The ledger's own lock beside a SQLite file does not wait for ever either."""
    url = f"sqlite:///{tmp_path}/x.db"
    ledger = _ledger(url, "x")
    held = os.open(tmp_path / "x.db.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # Another open file: conflicts as another process would.
    try:
        with pytest.raises(StudyLockedError, match="lock file .*x.db.lock"):
            ledger.claim(1, "w")
    finally:
        os.close(held)
    assert ledger.claim(1, "w") is not None


def test_unsupported_backends_and_passwords_in_messages(tmp_path):
    with pytest.raises(CifarSearchError, match="unsupported storage 'mysql'"):
        storage.open_storage("mysql://u:secret@localhost/db")
    assert "secret" not in storage.safe_url("postgresql://u:secret@localhost/db")


def test_a_signal_is_acted_on_at_the_next_check_only():
    interrupts = Interrupts()
    reached = []
    with interrupts.installed():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        reached.append("went on")
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert reached == ["went on"]


def test_a_signal_during_a_storage_write_lets_it_finish_and_leaves_the_study_free(
        storage_url, study_name):
    """A KeyboardInterrupt raised inside a write could leave the worker's own SQLite
    connection holding the write lock: failing and re-queuing its trial then waited out the
    busy timeout (a fresh clone's CI run, SIGTERM during an epoch's checkpoint)."""
    ledger = _ledger(storage_url, study_name)
    trial_id, number = ledger.claim(5, "host:1")

    def signal_mid_write(conn, cursor, statement, *args) -> None:
        if statement.lstrip().startswith(f"INSERT INTO {checkpoints.TABLE.name}"):
            signal.raise_signal(signal.SIGINT)

    interrupts = Interrupts()
    sqlalchemy.event.listen(ledger.storage.engine, "before_cursor_execute", signal_mid_write)
    with interrupts.installed():
        assert ledger.checkpoints.save(trial_id, ledger.study_id, "h", 1, b"model")
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    sqlalchemy.event.remove(ledger.storage.engine, "before_cursor_execute", signal_mid_write)
    assert ledger.checkpoints.load(trial_id).epoch == 1
    started = time.monotonic()
    assert ledger.fail(number)
    assert time.monotonic() - started < 5


def test_checkpoint_rows_of_finished_or_deleted_trials_are_swept(storage_url, study_name):
    ledger = _ledger(storage_url, study_name)
    trial_id, number = ledger.claim(5, "host:1")
    ledger.checkpoints.save(trial_id, ledger.study_id, "h", 1, b"m")
    ledger.study.tell(number, 0.5)  # Finished, and its checkpoint left behind.
    gone = _ledger(storage_url, f"{study_name}-gone")
    gone_id, _ = gone.claim(5, "host:2")
    gone.checkpoints.save(gone_id, gone.study_id, "h", 1, b"m")
    optuna.delete_study(study_name=f"{study_name}-gone", storage=gone.storage)
    ledger.recover()
    assert ledger.checkpoints.owners(ledger.study_id) == {}
    assert gone.checkpoints.owners(gone.study_id) == {}, "a deleted study's rows are swept"


def test_a_checkpoint_of_another_configuration_is_not_resumed(storage_url, study_name):
    from cifar_search.objective import Objective

    ledger = _ledger(storage_url, study_name)
    trial_id, number = ledger.claim(5, "host:1")
    ledger.checkpoints.save(trial_id, ledger.study_id, "another configuration", 3, b"model")
    lines: list[str] = []
    objective = Objective((None, None), (None, None), StudyConfig(), ledger.checkpoints,
                          ledger.study_id, lines.append)
    trial = optuna.Trial(ledger.study, trial_id)
    assert objective._resume(trial, trial_id, {"optimizer": "adam"}) == (None, 0, None)
    assert lines == [f"trial {number}: its checkpoint was trained with another "
                     f"configuration; starting over"]
    assert ledger.checkpoints.load(trial_id) is None


def test_an_interrupt_whose_exception_python_dropped_is_still_acted_on(capsys):
    """Python drops a KeyboardInterrupt raised in a finalizer ("Exception ignored in ..."):
    seen in the soak, where such a worker went on training after Ctrl-C."""
    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    interrupts = Interrupts()
    with interrupts.installed():
        Finalized()  # Its KeyboardInterrupt is dropped by Python, and not printed.
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert "KeyboardInterrupt" not in capsys.readouterr().err
