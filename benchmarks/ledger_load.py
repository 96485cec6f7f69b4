"""Ledger-only load test: how many workers one database serves.

P worker processes claim trials on one study and finish them at once (no training), for the
given time, on the given storage. Each claim goes through the ledger as a real worker's does
(under the study's lock: stale check, re-queue, count, claim with the first heartbeat). The
table gives claims per second over all workers and the claim latency (median and p99), so
the docs can say how many workers a database serves for trials that take minutes.

Usage: python benchmarks/ledger_load.py --storage URL [--processes 1 4 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import uuid

import optuna

from cifar_search.ledger import open_ledger, worker_id


def worker(name: str, url: str, seconds: float, queue: multiprocessing.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ledger = open_ledger(name, url)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        claimed = ledger.claim(10**9, worker_id())
        latencies.append(time.perf_counter() - start)
        assert claimed is not None
        ledger.study.tell(claimed[1], 0.5)
    queue.put(latencies)


def measure(url: str, processes: int, seconds: float) -> tuple[int, float, float, float, int]:
    """Claims, claims per second, median and p99 latency (ms), trials in the study at the end."""
    name = f"load-{uuid.uuid4().hex[:8]}"
    ledger = open_ledger(name, url, create=True)
    ledger.freeze_or_check({}, "none")
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(name, url, seconds, queue))
             for _ in range(processes)]
    start = time.monotonic()
    for p in procs:
        p.start()
    latencies = sorted(x for _ in procs for x in queue.get())
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    trials = len(ledger.trials())
    optuna.delete_study(study_name=name, storage=ledger.storage)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return (len(latencies), len(latencies) / elapsed, 1000 * statistics.median(latencies),
            1000 * p99, trials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"storage {args.storage.split(':', 1)[0]}, {args.seconds:.0f} s per row")
    print("| workers | claims | claims/s | median claim (ms) | p99 claim (ms) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for processes in args.processes:
        claims, rate, median, p99, _ = measure(args.storage, processes, args.seconds)
        print(f"| {processes} | {claims} | {rate:.1f} | {median:.1f} | {p99:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
