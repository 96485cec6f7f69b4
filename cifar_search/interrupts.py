"""Ctrl-C and SIGTERM, acted on where that is safe.

A worker must not be cut short inside a database write, a checkpoint, a finalizer or an
import: it notes the signal and stops at its next check instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupts:
    """Ctrl-C and SIGTERM, acted on only where that is safe: the handler notes the signal
    (:attr:`received`) and :meth:`check` raises KeyboardInterrupt.

    A worker checks between trials and after every training or validation batch, so a signal
    never lands inside a database write, a checkpoint or a finalizer. Raised there, it could
    leave the worker's own pooled SQLite connection holding the write lock (its next write,
    failing and re-queuing the trial, then waited out the busy timeout: seen in a fresh
    clone's CI run), or be dropped by Python and not acted on until the trial ended.
    """

    def __init__(self) -> None:
        self.received = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal came."""
        if self.received:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # Signals reach the main thread only: leave them alone.
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
