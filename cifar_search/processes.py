"""Worker processes: a search as a chain of fresh processes, and several workers at once.

TensorFlow keeps 10-20 MB of every model trained in a process after the model is gone
(keras-team/keras#17458, #20552), so one process running a long search keeps growing. The
supervisor here never imports TensorFlow: it runs the search in a child process that stops
after a few trials, then starts a fresh child, until the study holds its total. Each child's
memory goes back to the system when it exits; the study, in its database, does not notice.

Children run in their own session, so a Ctrl-C at the terminal reaches them once (forwarded
by the supervisor) and not twice, and on Linux they die with their supervisor, so a killed
worker is one dead process tree whose trial the heartbeat marks stale.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# A fresh process every this many trials: measured in docs/PERFORMANCE.md, section 7.
DEFAULT_RECYCLE = 5
_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


def without_option(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the option ``names`` and its value (as "NAME VALUE" or "NAME=VALUE")."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            kept.append(arg)
    return kept


def search_command(flags: Sequence[str]) -> list[str]:
    """The command line of a ``cifar-search search`` child with ``flags``."""
    return [sys.executable, "-m", "cifar_search", "search", *flags]


def _die_with_parent() -> None:
    """In the child, before it runs: get SIGKILL when the supervisor dies (Linux only)."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_children(commands: Sequence[Sequence[str]]) -> list[int]:
    """Run ``commands`` at once and return their exit codes.

    SIGINT and SIGTERM sent to this process are passed on to every child once, and it waits
    for them to leave their trials re-queued.
    """
    children: list[subprocess.Popen] = []

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED}
    try:
        for command in commands:
            children.append(subprocess.Popen(
                command, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None))
        return [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_recycled(
    flags: Sequence[str],
    every: int,
    done: Callable[[], bool],
    timeout: float | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run ``search flags`` in fresh child processes of at most ``every`` trials each.

    Stops when a child fails or is interrupted (its exit code is returned: it has said why),
    when ``done()`` says the study holds its total, or when ``timeout`` seconds have passed.
    """
    flags = without_option(flags, ("--recycle", "--timeout"))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        limits = ["--recycle", "0", "--process-trials", str(every)]
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return 0
            limits += ["--timeout", f"{remaining:.1f}"]
        (code,) = run_children([search_command([*flags, *limits])])
        if code or done():
            return code
        log(f"starting a fresh worker process (one every {every} trials, so memory that "
            "TensorFlow keeps after each trial is returned)")


def run_workers(flags: Sequence[str], processes: int, threads: int) -> list[int]:
    """``processes`` search workers with ``threads`` TensorFlow threads each; their exit codes."""
    command = search_command([*without_option(flags, ("--threads",)), "--threads", str(threads)])
    return run_children([command] * processes)
