"""The error types the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

# The exit code of a worker that gave up waiting for a locked study (sysexits' EX_TEMPFAIL):
# nothing is wrong with its input, and its supervisor starts a fresh one.
EXIT_LOCKED = 75


class CifarSearchError(Exception):
    """A problem the user can fix (bad input, missing data, unknown study, ...).

    The message is shown as is, on one line, so it must say what is wrong and what to do next.
    """


class StudyLockedError(CifarSearchError):
    """Another process held the study's lock for longer than a worker waits for it.

    On SQLite a process stopped (SIGSTOP, Ctrl-Z) or hung inside a transaction keeps the whole
    file locked; nothing is lost, and work goes on once it continues or dies.
    """

    def __init__(self, what: str, seconds: float, path: str) -> None:
        super().__init__(
            f"{what} stayed locked by another process for {seconds:g} s (a stopped or hung "
            f"worker? 'fuser {path}' names it); nothing was lost, and the study is free "
            f"again once that process continues or ends")
