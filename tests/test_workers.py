"""Several real worker processes on one study: shared totals, SIGKILL, Ctrl-C, PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import PG_URL, _pg_available
from optuna.trial import TrialState

from cifar_search.checkpoints import CheckpointStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from soak import children

from cifar_search.ledger import FINISHED

CLI = str(Path(sys.executable).with_name("cifar-search"))
TINY = ["--train-size", "500", "--val-size", "200", "--threads", "1"]


def _default_sigint() -> None:
    """Give the worker Ctrl-C's default action even where pytest itself was started in the
    background (a non-interactive shell starts background jobs with SIGINT ignored, and
    Python keeps an inherited "ignore")."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Worker:
    """One ``cifar-search search`` process whose output is collected in a file."""

    def __init__(self, args: list[str], cwd: Path, data_dir: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "CIFAR10_DIR": str(data_dir)}
        with log.open("w") as out:
            self.proc = subprocess.Popen([CLI, "search", *args], cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, preexec_fn=_default_sigint)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, seconds: float = 300) -> re.Match:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.output()):
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in worker output:\n{self.output()}")

    def finish(self, seconds: float = 600) -> int:
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker still running after {seconds} s:\n"
                                 f"{self.output()}") from None


def _assert_clean_total(study: optuna.Study, total: int) -> None:
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == total
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    seen = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(seen)) == len(seen), "a parameter set was trained twice"


def test_three_workers_share_one_total(tmp_path, data_dir, storage_url, study_name):
    args = ["--study", study_name, "--storage", storage_url, "--n-trials", "9",
            "--max-epochs", "1", "--pruner", "none", *TINY]
    workers = [Worker(args, tmp_path, data_dir, tmp_path / f"w{i}.log") for i in range(3)]
    codes = [w.finish() for w in workers]
    outputs = "\n".join(w.output() for w in workers)
    assert codes == [0, 0, 0], outputs
    assert "database is locked" not in outputs and "Traceback" not in outputs
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    _assert_clean_total(study, 9)
    # Every worker did some of the work.
    assert all(re.search(r"trial \d+ starts", w.output()) for w in workers), outputs


def _wait_for_checkpoint(url: str, name: str) -> tuple[CheckpointStore, int]:
    """Wait until trial 0 of study ``name`` holds a checkpoint; the store and its trial id."""
    store = CheckpointStore(sqlalchemy.create_engine(url))
    trial_id = optuna.load_study(study_name=name, storage=url).get_trials()[0]._trial_id
    deadline = time.monotonic() + 60
    while store.load(trial_id) is None:
        assert time.monotonic() < deadline, "no checkpoint after a minute"
        time.sleep(0.05)
    return store, trial_id


def test_killed_worker_trial_resumes_from_its_checkpoint(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/kill.db"
    args = ["--study", "kill", "--storage", url, "--n-trials", "2", "--max-epochs", "4",
            "--pruner", "none", "--heartbeat", "2", "--train-size", "2000", "--val-size", "200"]
    first = Worker(args, tmp_path, data_dir, tmp_path / "first.log")
    first.wait_for(r"trial 0 epoch 1/4")
    store, trial_id = _wait_for_checkpoint(url, "kill")
    study = optuna.load_study(study_name="kill", storage=url)
    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    assert study.get_trials()[0].state == TrialState.RUNNING  # As the dead worker left it.
    saved_epoch = store.load(trial_id).epoch
    time.sleep(7)  # Past the grace period of three 2-second heartbeats.

    second = Worker(args, tmp_path, data_dir, tmp_path / "second.log")
    assert second.finish() == 0, second.output()
    resumed = second.wait_for(r"trial (\d+) resumes trial 0 after epoch (\d+)")
    assert int(resumed.group(2)) == saved_epoch >= 1
    resumed_lines = re.findall(rf"trial {resumed.group(1)} epoch (\d)/4", second.output())
    assert [int(e) for e in resumed_lines] == list(range(saved_epoch + 1, 5))
    trials = optuna.load_study(study_name="kill", storage=url).get_trials()
    assert trials[0].state == TrialState.FAIL
    retried = trials[int(resumed.group(1))]
    assert retried.state == TrialState.COMPLETE and retried.params == trials[0].params
    assert len(retried.user_attrs["history"]["val_accuracy"]) == 4
    assert sorted(retried.intermediate_values) == [1, 2, 3, 4]
    assert len([t for t in trials if t.state in FINISHED]) == 2
    assert not store.owners(study._study_id), "checkpoints are removed when their trial ends"


def test_ctrl_c_requeues_the_trial_and_a_rerun_completes_the_study(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/int.db"
    args = ["--study", "int", "--storage", url, "--n-trials", "3", "--max-epochs", "3",
            "--pruner", "none", "--train-size", "2000", "--val-size", "200"]
    first = Worker(args, tmp_path, data_dir, tmp_path / "first.log")
    first.wait_for(r"trial 1 epoch 1/3")
    sent = time.monotonic()
    first.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    first.proc.send_signal(signal.SIGINT)  # Twice, as an impatient user does.
    assert first.finish() == 130
    assert time.monotonic() - sent < 10, "the worker must stop within a few seconds"
    out = first.output()
    assert "trial 1 interrupted; trial 1 re-queued as trial" in out and "Traceback" not in out
    study = optuna.load_study(study_name="int", storage=url)
    states = [t.state for t in study.get_trials()]
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL] and TrialState.WAITING in states

    second = Worker(args, tmp_path, data_dir, tmp_path / "second.log")
    assert second.finish() == 0, second.output()
    _assert_clean_total(optuna.load_study(study_name="int", storage=url), 3)


def test_sigterm_is_handled_like_ctrl_c(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/term.db"
    args = ["--study", "term", "--storage", url, "--n-trials", "2", "--max-epochs", "3",
            "--train-size", "2000", "--val-size", "200"]
    worker = Worker(args, tmp_path, data_dir, tmp_path / "w.log")
    worker.wait_for(r"trial 0 epoch 1/3")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish(30) == 130
    assert "trial 0 interrupted; trial 0 re-queued as trial 2" in worker.output()
    states = [t.state for t in optuna.load_study(study_name="term", storage=url).get_trials()]
    # Trial 0 (the preset) failed; the baseline is still queued, and so is trial 0's retry.
    assert states == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]


def test_workers_command_starts_k_processes_on_one_study(tmp_path, data_dir):
    env = {**os.environ, "CIFAR10_DIR": str(data_dir)}
    done = subprocess.run(  # "-k2" and a relative --storage, as a user may write them.
        [CLI, "workers", "-k2", "--study", "pair", "--storage", "sqlite:///pair.db",
         "--n-trials", "4", "--max-epochs", "1", "--train-size", "500", "--val-size", "200"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"starting 2 workers with {threads} thread(s) each" in done.stdout
    study = optuna.load_study(study_name="pair", storage=f"sqlite:///{tmp_path}/pair.db")
    _assert_clean_total(study, 4)


def test_search_recycles_its_worker_process_every_n_trials(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/recycle.db"
    args = ["--study", "recycle", "--storage", url, "--n-trials", "5", "--max-epochs", "1",
            "--pruner", "none", "--recycle", "2", "--sampler-seed", "0", *TINY]
    worker = Worker(args, tmp_path, data_dir, tmp_path / "w.log")
    assert worker.finish() == 0, worker.output()
    assert worker.output().count("starting a fresh trial process") == 2
    study = optuna.load_study(study_name="recycle", storage=url)
    _assert_clean_total(study, 5)
    processes = [t.user_attrs["worker"] for t in study.get_trials()]
    a, b, c = dict.fromkeys(processes)  # In order of first appearance.
    assert processes == [a, a, b, b, c]


def _trial_process(worker: Worker, seconds: float = 60) -> int:
    """The pid of the worker's trial process (forked by its supervisor)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := children(worker.proc.pid):
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no trial process under worker {worker.proc.pid}")


def test_a_killed_trial_process_is_requeued_by_its_supervisor_at_once(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/oom.db"
    args = ["--study", "oom", "--storage", url, "--n-trials", "2", "--max-epochs", "3",
            "--pruner", "none", "--train-size", "2000", "--val-size", "200", "--threads", "1"]
    worker = Worker(args, tmp_path, data_dir, tmp_path / "w.log")  # Heartbeat: 10 s.
    worker.wait_for(r"trial 0 epoch 1/3")
    pid = _trial_process(worker)
    os.kill(pid, signal.SIGKILL)  # As the out-of-memory killer does.
    killed = time.monotonic()
    worker.wait_for(rf"trial process {pid} was killed by SIGKILL .*; trial 0 re-queued as "
                    rf"trial 2", seconds=60)
    assert time.monotonic() - killed < 10, "at once, not after three 10 s heartbeats"
    assert worker.finish() == 0, worker.output()
    trials = optuna.load_study(study_name="oom", storage=url).get_trials()
    assert trials[0].state == TrialState.FAIL and trials[2].params == trials[0].params
    _assert_clean_total(optuna.load_study(study_name="oom", storage=url), 2)


def test_a_stopped_worker_finds_its_trial_taken_over_and_goes_on(tmp_path, data_dir):
    """SIGSTOP past the grace period: another worker fails and retries the trial; the
    stopped one, continued, must neither crash nor count it twice.

    On PostgreSQL, where workers on several machines meet this: on SQLite a process frozen
    inside a transaction holds the whole file's lock (docs/RELIABILITY.md, limits)."""
    if (reason := _pg_available()) is not None:
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    url, study_name = PG_URL, f"test-{uuid.uuid4().hex[:12]}"
    args = ["--study", study_name, "--storage", url, "--n-trials", "3", "--max-epochs", "6",
            "--pruner", "none", "--train-size", "3000", "--val-size", "200", "--threads", "1",
            "--heartbeat", "1"]
    first = Worker(args, tmp_path, data_dir, tmp_path / "first.log")
    first.wait_for(r"trial 0 epoch 1/6")
    _wait_for_checkpoint(url, study_name)
    pid = _trial_process(first)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(4.5)  # Past three 1-second heartbeats.
        second = Worker(args, tmp_path, data_dir, tmp_path / "second.log")
        # After the epoch of the checkpoint it was stopped at (1, or a later one on a fast
        # machine: the stop comes a moment after the first checkpoint).
        second.wait_for(r"trial \d+ resumes trial 0 after epoch [1-5]")
    finally:
        os.kill(pid, signal.SIGCONT)
    first.wait_for(r"trial 0 was failed by another worker")
    assert first.finish() == 0 and second.finish() == 0, first.output() + second.output()
    assert "Traceback" not in first.output() + second.output()
    study = optuna.load_study(study_name=study_name, storage=url)
    _assert_clean_total(study, 3)
    assert study.get_trials()[0].state == TrialState.FAIL


def test_two_finalize_at_once_exactly_one_reads_the_test_set(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/fin.db"
    common = ["--study", "fin", "--storage", url]
    Worker([*common, "--n-trials", "1", *TINY, "--max-epochs", "1"], tmp_path, data_dir,
           tmp_path / "search.log").finish()
    env = {**os.environ, "CIFAR10_DIR": str(data_dir)}
    finals = [subprocess.Popen([CLI, "finalize", *common, "--threads", "1"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    done = [(p.wait(timeout=600), *p.communicate()) for p in finals]
    assert sorted(code for code, _, _ in done) == [0, 2], done
    (refused,) = [err for code, _, err in done if code == 2]
    assert refused.startswith("cifar-search: error: study 'fin' was already evaluated")
    assert refused.count("\n") == 1
    assert sum("reading the test set" in out for _, out, _ in done) == 1
    (record,) = optuna.load_study(study_name="fin", storage=url).user_attrs["test_evaluations"]
    assert record["status"] == "done" and not record["forced"]
