"""The ``cifar-search`` command's entry point, kept outside the package on purpose.

Importing the package takes a second or two (Optuna, SQLAlchemy, scikit-learn); a Ctrl-C in
that time would end in Python's traceback. This module, which imports nothing heavy, first
turns such an early Ctrl-C into one line; :func:`cifar_search.cli.main` then takes over.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130


def _interrupted_while_starting(signum: int, frame: object) -> None:
    print("cifar-search: interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def entry_point() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Respect an inherited ignore.
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from cifar_search.cli import main

    sys.exit(main())
