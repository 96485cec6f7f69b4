"""The supervisor's forked children, without TensorFlow: exit codes, failures, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from cifar_search.errors import EXIT_LOCKED
from cifar_search.processes import Forked, run_children, run_recycled, without_option


def test_forked_child_exit_code_is_its_body_return_value():
    assert Forked(lambda: 3).wait() == 3
    assert Forked(lambda: 0).wait() == 0


def test_forked_child_exception_is_exit_code_1_and_never_returns_into_the_parent(capfd):
    def fail() -> int:
        raise ValueError("boom")

    parent = os.getpid()
    assert Forked(fail).wait() == 1
    assert os.getpid() == parent  # Only the parent gets here.
    assert "ValueError: boom" in capfd.readouterr().err


def test_a_forked_child_interrupted_on_its_way_out_still_exits_with_its_code():
    """A Ctrl-C forwarded just as a child's trials were done raised in its last flush and
    skipped ``os._exit``: the child ran on in its copy of the parent's code."""
    class InterruptedFlush:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            raise KeyboardInterrupt

    def body() -> int:
        sys.stdout = InterruptedFlush()
        return 3

    try:
        child = Forked(body)
    except KeyboardInterrupt:  # Only a child that escaped gets here.
        os._exit(99)
    assert child.wait() == 3


def test_forked_child_runs_in_its_own_session():
    session = os.getsid(0)
    assert Forked(lambda: int(os.getsid(0) == session)).wait() == 0


def test_sigterm_to_the_supervisor_reaches_the_child_once():
    def sleeper() -> int:
        time.sleep(60)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    assert run_children([lambda: Forked(sleeper)]) == [-signal.SIGTERM]
    assert time.monotonic() - start < 30
    assert signal.getsignal(signal.SIGTERM) is before  # The supervisor's handler is undone.


def test_recycled_children_run_until_done_and_only_the_first_is_first(tmp_path):
    marks = tmp_path / "marks"

    def trials(timeout: float | None, first: bool) -> int:
        with marks.open("a") as out:
            out.write(f"{os.getpid()} {first}\n")
        return 0

    lines = []
    assert run_recycled(trials, 1, lambda: len(marks.read_text().splitlines()) == 3,
                        log=lines.append) == 0
    runs = [line.split() for line in marks.read_text().splitlines()]
    assert [first for _, first in runs] == ["True", "False", "False"]
    assert len({pid for pid, _ in runs}) == 3 and str(os.getpid()) not in {p for p, _ in runs}
    assert lines == []  # One trial per process: nothing to announce.


def test_recycled_chain_stops_at_a_failing_child():
    assert run_recycled(lambda timeout, first: 2, 5, lambda: False, log=print) == 2


def test_a_child_locked_out_of_the_study_is_released_and_another_tries(tmp_path):
    """Exit 75 (it gave up waiting for a study locked by another process, and said so):
    its trial is released and a fresh child tries again, up to the limit in a row."""
    runs = tmp_path / "runs"
    runs.touch()
    codes = [EXIT_LOCKED, 0, EXIT_LOCKED, EXIT_LOCKED, EXIT_LOCKED, 0]

    def trials(timeout: float | None, first: bool) -> int:
        done = len(runs.read_text())
        runs.write_text("x" * (done + 1))
        return codes[done]

    died = []
    assert run_recycled(trials, 1, lambda: False, log=print,
                        died=lambda pid, how: died.append(how)) == 1
    assert len(runs.read_text()) == 5  # Stopped after three lock-outs in a row, not two.
    assert died == ["gave up waiting for the study's lock"] * 4


def test_without_option_drops_both_spellings():
    argv = ["--study", "s", "--threads", "2", "--threads=1", "-k", "3", "-k4"]
    assert without_option(argv, ("--threads", "-k")) == ["--study", "s"]


def test_importing_the_objective_does_not_start_tensorflow():
    """The supervisor imports it before forking: a module-level tensor would start the
    runtime's threads there, and a forked trial process could hang on their locks."""
    check = ("import cifar_search.objective, tensorflow as tf; "
             "tf.config.threading.set_intra_op_parallelism_threads(1)")  # Raises once started.
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_child_reaped_by_a_signal_handler_while_waiting_is_no_error():
    """The soak found it: SIGTERM reached a supervisor blocked in wait(); forwarding it, the
    handler's poll() reaped the child that had just exited, and the resumed wait() raised
    ChildProcessError."""
    def child() -> int:
        time.sleep(0.3)
        return 5

    forked = Forked(child)

    def handler(signum: int, frame: object) -> None:
        time.sleep(0.6)  # The child exits meanwhile.
        assert forked.poll() == 5

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        assert forked.wait() == 5
    finally:
        signal.signal(signal.SIGALRM, previous)
