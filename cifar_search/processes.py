"""Worker processes: a search as a chain of forked trial processes, and several workers at once.

TensorFlow keeps 10-20 MB of every model trained in a process after the model is gone
(keras-team/keras#17458, #20552), and more after the larger batches, so one process running
a long search keeps growing. A search's supervisor therefore loads the data and TensorFlow's
libraries once, and forks a trial process for every few trials (by default every trial); the
children share what it loaded (copy-on-write), train, and give all their memory back when
they exit. The study, in its database, does not notice. The supervisor never runs a
TensorFlow operation: the runtime starts its thread pools with the first one, and threads do
not survive a fork, so each trial process starts its own.

Children run in their own session, so a Ctrl-C at the terminal reaches them once (forwarded
by the supervisor) and not twice, and on Linux they die with their supervisor, so a killed
worker is one dead process tree whose trial the heartbeat marks stale.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cifar_search.errors import EXIT_LOCKED

# A fresh trial process every this many trials: measured in docs/PERFORMANCE.md, section 7.
DEFAULT_RECYCLE = 1
_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


class Child(Protocol):
    """What the supervisor needs of a child process (a :class:`subprocess.Popen` has it)."""

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def wait(self) -> int: ...


def drop_interrupt_reports(report: Any) -> None:
    """``sys.unraisablehook`` for a worker: a KeyboardInterrupt that Python dropped in a
    finalizer is not printed (the worker acts on the signal itself); the rest is."""
    if not isinstance(report.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(report)


def without_option(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the option ``names`` and its value, however argparse accepts it: "NAME
    VALUE", "--NAME=VALUE", or "-kVALUE" for a short one (the parser allows no
    abbreviations)."""
    attached = tuple(f"{n}=" if n.startswith("--") else n for n in names)
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(attached):
            kept.append(arg)
    return kept


def search_command(flags: Sequence[str]) -> list[str]:
    """The command line of a ``cifar-search search`` child with ``flags``."""
    return [sys.executable, "-m", "cifar_search", "search", *flags]


def _die_with_parent() -> None:
    """In the child, before it runs: get SIGKILL when the supervisor dies (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Forked:
    """A forked child running ``body()`` in its own session; its return value is the exit code.

    The parent must not have run a TensorFlow operation (or started threads of its own).
    """

    def __init__(self, body: Callable[[], int]) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        self.returncode: int | None = None
        if self.pid == 0:
            self._run_child(body, parent)

    @staticmethod
    def _run_child(body: Callable[[], int], parent: int) -> None:
        code = 1
        try:
            os.setsid()
            _die_with_parent()
            if os.getppid() != parent:  # The supervisor died before the line above.
                os._exit(1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = body()
        except BaseException:  # noqa: BLE001 (a child must never return into the parent's code)
            traceback.print_exc()
        finally:
            try:  # A Ctrl-C forwarded while the trials are done raises here, at the latest.
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # Reaped meanwhile by a signal handler's poll().
                return self.returncode
            if pid and self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self) -> int:
        code = self._reap(0)
        assert code is not None
        return code


def run_children(starts: Sequence[Callable[[], Child]],
                 forwarded: list[int] | None = None) -> list[int]:
    """Start a child with each of ``starts``, all at once, and return their exit codes.

    SIGINT and SIGTERM sent to this process are passed on to every child, noted in
    ``forwarded``, and it waits for them to leave their trials re-queued.
    """
    children: list[Child] = []

    def forward(signum: int, frame: object) -> None:
        if forwarded is not None:
            forwarded.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        for start in starts:
            children.append(start())
        return [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# A supervisor gives up after this many trial processes in a row were killed or locked out.
MAX_DEATHS_IN_A_ROW = 3


def how_it_died(code: int) -> str:
    """``code`` of a dead child (negative: the signal that killed it) in words."""
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the out-of-memory killer sends it)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    if code == EXIT_LOCKED:
        return "gave up waiting for the study's lock"
    return f"exited with code {code}"


def run_recycled(
    trials: Callable[[float | None, bool], int],
    every: int,
    done: Callable[[], bool],
    timeout: float | None = None,
    log: Callable[[str], None] = print,
    died: Callable[[int, str], object] = lambda pid, how: None,
) -> int:
    """Run ``trials(timeout, first)`` in forked children, one after another, until done.

    Each child runs at most ``every`` trials (``trials`` limits itself); ``first`` is true in
    the first child only. A child killed by a signal (the out-of-memory killer, an operator),
    or one that gave up waiting for a study locked by another process (exit
    :data:`~cifar_search.errors.EXIT_LOCKED`), is reported to ``died(pid, how)``, which fails
    and re-queues its trial, and the next child goes on; after :data:`MAX_DEATHS_IN_A_ROW`
    such deaths the supervisor stops.
    Stops when a child fails or is interrupted (its exit code is returned: it has said
    why; one that crashed is reported to ``died`` too), when ``done()`` says the study's
    total is claimed, or when ``timeout`` seconds have passed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    first, deaths = True, 0
    forwarded: list[int] = []
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return 0
        if not first and every > 1:
            log(f"starting a fresh trial process (one every {every} trials, so memory that "
                "TensorFlow keeps after each trial is returned)")
        child = Forked(lambda: trials(remaining, first))  # noqa: B023 (called at once)
        (code,) = run_children([lambda: child], forwarded)  # noqa: B023 (called at once)
        first = False
        if code < 0 or code in (1, EXIT_LOCKED):
            died(child.pid, how_it_died(code))
        if forwarded or -code in _FORWARDED:  # Ctrl-C or SIGTERM: stop, whatever the child
            return 130                         # made of it.
        if code < 0 or code == EXIT_LOCKED:
            deaths += 1
            if deaths >= MAX_DEATHS_IN_A_ROW:
                log(f"{deaths} trial processes in a row were killed or locked out; this "
                    f"worker stops")
                return 1
            continue
        deaths = 0
        if code or done():
            return code


def run_workers(flags: Sequence[str], processes: int, threads: int,
                env: dict[str, str] | None = None) -> list[int]:
    """``processes`` search workers with ``threads`` TensorFlow threads each, in environment
    ``env``; their exit codes."""
    command = search_command([*without_option(flags, ("--threads",)), "--threads", str(threads)])

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent,
                                env=env)

    return run_children([start] * processes)
