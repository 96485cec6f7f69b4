"""Why a search worker acts on Ctrl-C only between batches: Python's own KeyboardInterrupt,
raised at a random moment of the storage writes an epoch makes (the curves, the report, a
7.6 MB checkpoint), sometimes leaves the process's pooled SQLite connection holding the
write lock, so the worker's next write waits out the busy timeout.

This uses Python's default SIGINT handler on purpose (what the worker had before); it
measures Python and SQLAlchemy, not cifar_search's signal handling.

    python benchmarks/signal_in_writes.py --rounds 300
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time

import optuna
import sqlalchemy as sa

from cifar_search import storage
from cifar_search.errors import StudyLockedError
from cifar_search.ledger import open_ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--busy-timeout", type=int, default=3,
                        help="seconds a write waits for the lock before it fails")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage.SQLITE_TIMEOUT_SECONDS = args.busy_timeout
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ledger = open_ledger("s", f"sqlite:///{tempfile.mkdtemp()}/s.db", create=True)
    claimed = ledger.claim(10**6, "bench")
    assert claimed is not None
    trial_id = claimed[0]
    trial = optuna.Trial(ledger.study, trial_id)
    payload = os.urandom(7_600_000)
    main_thread = threading.get_ident()
    locked = interrupted = 0
    for round_ in range(args.rounds):
        timer = threading.Timer(random.uniform(0, 0.15),
                                lambda: signal.pthread_kill(main_thread, signal.SIGINT))
        timer.start()
        try:
            for epoch in range(50 * round_ + 1, 50 * round_ + 51):
                trial.set_user_attr("history", {"val_accuracy": [0.5] * epoch})
                trial.report(0.5, epoch)
                ledger.checkpoints.save(trial_id, ledger.study_id, "h", epoch, payload)
            timer.cancel()
        except KeyboardInterrupt:
            interrupted += 1
        timer.join()
        try:
            with ledger.storage.engine.begin() as conn:
                conn.execute(sa.text("SELECT 1"))
        except StudyLockedError:
            locked += 1
    print(f"{args.rounds} rounds, {interrupted} interrupted inside writes, {locked} left the "
          f"write lock held (next write failed after {args.busy_timeout} s)")


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"{time.monotonic() - start:.0f} s")
