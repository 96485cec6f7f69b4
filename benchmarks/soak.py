"""Fault-injection soak: K real workers on one study, random seeded faults, then the invariants.

K ``cifar-search search`` supervisors share one study (tiny real trials: a few hundred
images, 2 epochs) on SQLite or PostgreSQL for the given time. Every few seconds a seeded
random fault hits them:

* ``kill-worker``: SIGKILL a supervisor (its trial process dies with it); a new one starts;
* ``kill-trial``: SIGKILL a trial process alone, as the out-of-memory killer does;
* ``stop-trial``: SIGSTOP a trial process past the grace period, then SIGCONT;
* ``ctrl-c``: SIGINT to a supervisor; a new one starts;
* ``join-together``: SIGTERM two supervisors and start two new ones at the same instant;
* ``wrong-heartbeat``: a worker with another ``--heartbeat`` (refused: the study froze it).

The faults start once a worker has made the study (workers killed while starting are
covered by the replacements, which start while the faults go on). Then every worker is
stopped (SIGTERM), a last clean worker finishes the study, two ``finalize`` run at once, and
the invariants are checked and printed as a table; the exit code is 1 if any fails.

Usage: python benchmarks/soak.py --storage URL [--workers 6] [--minutes 30] [--seed 0]
       [--fault-every 15] [--out logs/soak]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cifar_search.errors import CifarSearchError
from cifar_search.ledger import (
    FINISHED,
    evaluations,
    frozen_config,
    given_up,
    open_ledger,
    original_number,
)

CLI = str(Path(sys.executable).with_name("cifar-search"))
HEARTBEAT = 2
TINY = ["--train-size", "300", "--val-size", "100", "--max-epochs", "2", "--pruner", "none",
        "--threads", "1", "--heartbeat", str(HEARTBEAT)]
FAULTS = ("kill-worker", "kill-trial", "stop-trial", "ctrl-c", "join-together",
          "wrong-heartbeat")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a supervisor's trial process)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.name = f"soak-{uuid.uuid4().hex[:8]}"
        self.out = Path(args.out) / self.name
        self.out.mkdir(parents=True, exist_ok=True)
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.refused: list[tuple[subprocess.Popen, Path]] = []
        self.log_of: dict[int, Path] = {}
        self.unstopped: list[str] = []
        self.env = {**os.environ, "CIFAR10_DIR": args.data_dir or os.environ.get("CIFAR10_DIR",
                                                                                 "")}

    def command(self, *extra: str) -> list[str]:
        return [CLI, "search", "--study", self.name, "--storage", self.args.storage, *extra]

    def start(self, command: list[str] | None = None) -> subprocess.Popen:
        log = self.out / f"w{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("w") as out:
            proc = subprocess.Popen(command or self.command("--n-trials", "100000", *TINY),
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_default_sigint)
        self.log_of[proc.pid] = log
        return proc

    def alive(self) -> list[subprocess.Popen]:
        self.workers = [w for w in self.workers if w.poll() is None]
        return self.workers

    def top_up(self) -> None:
        while len(self.alive()) < self.args.workers:
            self.workers.append(self.start())

    def trial_processes(self) -> list[int]:
        return [c for w in self.alive() for c in children(w.pid)]

    def inject(self, fault: str) -> bool:
        """Inject ``fault``; whether there was something to inject it into."""
        workers = self.alive()
        if fault in ("kill-worker", "ctrl-c") and workers:
            self.rng.choice(workers).send_signal(
                signal.SIGKILL if fault == "kill-worker" else signal.SIGINT)
        elif fault in ("kill-trial", "stop-trial") and (trials := self.trial_processes()):
            pid = self.rng.choice(trials)
            if fault == "kill-trial":
                _signal(pid, signal.SIGKILL)  # It may have just finished: then a new one.
            else:
                _signal(pid, signal.SIGSTOP)
                pause = 3 * HEARTBEAT + 3 + self.rng.random() * 3  # Past the grace period.
                threading.Timer(pause, lambda: _signal(pid, signal.SIGCONT)).start()
        elif fault == "join-together" and len(workers) >= 2:
            for worker in self.rng.sample(workers, 2):
                worker.send_signal(signal.SIGTERM)
            self.workers += [self.start(), self.start()]
        elif fault == "wrong-heartbeat" and self.frozen():
            flags = list(TINY)
            flags[flags.index("--heartbeat") + 1] = str(HEARTBEAT + 1)
            proc = self.start(self.command("--n-trials", "100000", *flags))
            self.refused.append((proc, self.logs[-1]))
        else:
            return False
        self.faults[fault] += 1
        return True

    def frozen(self) -> bool:
        """Whether one of the soak's own workers froze the study's configuration: a worker
        with another heartbeat that came first would freeze its own and refuse the rest."""
        try:
            ledger = open_ledger(self.name, self.args.storage)
        except CifarSearchError:  # No study yet.
            return False
        try:
            return frozen_config(ledger.study) is not None
        finally:
            ledger.storage.engine.dispose()

    @staticmethod
    def refused_in_time(proc: subprocess.Popen) -> bool:
        """Whether a worker with another heartbeat exited with the refusal's code 2 (one
        still loading when the soak ends is waited for; one never refused is stopped, and
        the check says so instead of waiting for it for ever)."""
        try:
            return proc.wait(timeout=300) == 2
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False

    @staticmethod
    def stopped_in_time(worker: subprocess.Popen) -> bool:
        """Whether ``worker`` exited within 120 s of SIGTERM (one that did not is stopped,
        and the check says so)."""
        try:
            worker.wait(timeout=120)
            return True
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            return False

    def wait_for_the_study(self, seconds: float = 600) -> None:
        """Until a worker has made and frozen the study: on a loaded machine the workers can
        take longer to start than a short soak lasts, which then had no study to check."""
        deadline = time.monotonic() + seconds
        while not self.frozen():
            if time.monotonic() > deadline or not self.alive():
                raise SystemExit(f"no worker made study {self.name} within {seconds:.0f} s; "
                                 f"see the logs in {self.out}")
            time.sleep(0.5)

    def run(self) -> int:
        self.top_up()  # K workers joining a new study at the same instant.
        self.wait_for_the_study()
        start = time.monotonic()
        end = start + 60 * self.args.minutes
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(0.5, 1.5) * self.args.fault_every)
            self.inject(self.rng.choice(FAULTS))
            self.top_up()
        for worker in self.alive():
            worker.send_signal(signal.SIGTERM)
        self.unstopped = [self.log_of[worker.pid].name for worker in self.workers
                          if not self.stopped_in_time(worker)]
        time.sleep(3 * HEARTBEAT + 3)  # Stopped trial processes are stale by now.
        chaos_seconds = time.monotonic() - start
        ledger = open_ledger(self.name, self.args.storage)
        ledger.recover()
        trials = ledger.trials()
        n = (sum(t.state in FINISHED for t in trials)
             + sum(t.state == TrialState.WAITING for t in trials) + 1)
        last = self.start(self.command("--n-trials", str(n), *TINY))
        last_code = last.wait(timeout=1800)
        finals = [subprocess.Popen([CLI, "finalize", "--study", self.name, "--storage",
                                    self.args.storage, "--threads", "1",
                                    "--output-dir", str(self.out / "final")],
                                   env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(2)]
        final_runs = [(p.wait(timeout=1800), *p.communicate()) for p in finals]
        rows = self.check(n, last_code, final_runs)
        self.print(rows, chaos_seconds, n)
        return 0 if all(ok for _, ok, _ in rows) else 1

    def check(self, n: int, last_code: int,
              final_runs: list[tuple[int, str, str]]) -> list[tuple[str, bool, str]]:
        ledger = open_ledger(self.name, self.args.storage)
        trials = ledger.trials()
        finished = [t for t in trials if t.state in FINISHED]
        chains = collections.Counter(original_number(t) for t in finished)
        configs = collections.Counter(tuple(sorted(t.params.items())) for t in finished)
        logs = {p: p.read_text() for p in self.logs}
        text = "\n".join(logs.values())
        resumes = re.findall(r"trial (\d+) resumes trial (\d+) after epoch", text)
        by_number = {t.number: t for t in trials}
        wrong_resume = [(a, b) for a, b in resumes
                        if original_number(by_number[int(a)]) != int(b)]
        codes = sorted(code for code, _, _ in final_runs)
        refusal = next((err for code, _, err in final_runs if code == 2), "")
        records = evaluations(ledger.study)
        gave_up = given_up(trials)
        traces = [p.name for p, t in logs.items() if "Traceback" in t]
        refused_ok = all(self.refused_in_time(p) and "frozen configuration" in log.read_text()
                         for p, log in self.refused)
        return [
            (f"exactly n = {n} finished trials", len(finished) == n, str(len(finished))),
            ("nothing RUNNING or WAITING left",
             not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)],
             f"{sum(t.state == TrialState.RUNNING for t in trials)} running, "
             f"{sum(t.state == TrialState.WAITING for t in trials)} waiting"),
            ("each retry chain has at most one finished member",
             max(chains.values(), default=0) <= 1,
             f"{len(chains)} chains"),
            ("no configuration finished twice", max(configs.values(), default=0) <= 1,
             f"{len(configs)} configurations"),
            ("every trial given up was reported as such",
             all(re.search(rf"trial {g} given up", text) for g in gave_up),
             f"{len(gave_up)} given up"),
            ("no checkpoint left (every row belongs to an unfinished trial)",
             not ledger.checkpoints.owners(ledger.study_id),
             f"{len(ledger.checkpoints.owners(ledger.study_id))} rows"),
            ("no checkpoint resumed into another configuration", not wrong_resume,
             f"{len(resumes)} resumes"),
            ("exactly one unforced test evaluation, recorded",
             len(records) == 1 and records[0].status == "done" and not records[0].forced
             and codes == [0, 2] and refusal.count("\n") == 1
             and refusal.startswith("cifar-search: error:"),
             f"finalize exit codes {codes}"),
            ("workers with another heartbeat were refused", refused_ok,
             f"{len(self.refused)} refused"),
            ("every worker stopped within 120 s of SIGTERM", not self.unstopped,
             ", ".join(self.unstopped) or "all"),
            ("the last clean worker finished (exit 0)", last_code == 0, str(last_code)),
            ("no traceback in any worker's output", not traces, ", ".join(traces) or "none"),
        ]

    def print(self, rows: list[tuple[str, bool, str]], seconds: float, n: int) -> None:
        backend = self.args.storage.split(":", 1)[0]
        print(f"soak of study {self.name} on {backend}: {self.args.workers} workers, "
              f"{seconds / 60:.1f} min of faults, {sum(self.faults.values())} faults "
              f"injected, {len(self.logs)} worker processes started")
        print("\n| fault | injected |\n| --- | ---: |")
        for fault in FAULTS:
            print(f"| {fault} | {self.faults[fault]} |")
        print("\n| invariant | holds | seen |\n| --- | --- | --- |")
        for name, ok, seen in rows:
            print(f"| {name} | {'yes' if ok else '**NO**'} | {seen} |")
        print(f"\nworker logs: {self.out}")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="SQLAlchemy URL of the database")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-every", type=float, default=15,
                        help="mean seconds between faults")
    parser.add_argument("--data-dir", help="CIFAR-10 folder (default: $CIFAR10_DIR)")
    parser.add_argument("--out", default="logs/soak")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return Soak(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
