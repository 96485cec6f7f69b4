"""``cifar-search``: argument parsing and messages only; the work is done by the modules.

Problems the user can fix come out as one ``cifar-search: error: ...`` line and exit code 2;
Ctrl-C exits with 130 after the study has been left consistent.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cifar_search.config import PRUNERS, RANDOM_TRIALS
from cifar_search.errors import EXIT_LOCKED, CifarSearchError, StudyLockedError
from cifar_search.interrupts import Interrupts
from cifar_search.presets import DEFAULTS as DEFAULT_PRESETS
from cifar_search.presets import PRESETS
from cifar_search.processes import DEFAULT_RECYCLE, drop_interrupt_reports

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# Where ``workers`` hands its children the storage URL: a password stays out of ``ps``.
STORAGE_ENV = "CIFAR_SEARCH_STORAGE"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _Parser(argparse.ArgumentParser):
    """Bad arguments, like every error the user can fix: one line, exit 2. No abbreviated
    options: ``workers`` passes its options on, and must recognise every one it removes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> Any:
        print(f"cifar-search: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _log(message: str) -> None:
    print(message, flush=True)


def _storage_url(args: argparse.Namespace) -> str:
    from cifar_search.storage import study_url

    return study_url(args.study, args.storage)


def _open_storage(args: argparse.Namespace):
    from cifar_search import storage

    return storage.open_storage(_storage_url(args))


def _open_study(args: argparse.Namespace, stored=None):
    from cifar_search import storage

    return storage.load_study(args.study, stored or _open_storage(args))


def cmd_search(args: argparse.Namespace) -> int:
    # Trial processes are forked; forking a process that loaded TensorFlow's libraries is
    # measured and tested on Linux only (macOS frameworks are not fork-safe, Windows has none).
    if not args.recycle or sys.platform != "linux":
        return _search_here(args, max_trials=None, timeout=args.timeout)
    from cifar_search.processes import run_recycled
    from cifar_search.search import load_train_set

    loaded = load_train_set(args.data_dir)  # Once per worker: the trial processes share it.
    _import_keras_quietly()  # Loaded, not started: each trial process starts its own runtime.
    import cifar_search.objective  # noqa: F401

    def trials(timeout: float | None, first: bool) -> int:
        return _guarded(lambda: _search_here(args, max_trials=args.recycle, timeout=timeout,
                                             loaded=loaded, header=first))

    code = run_recycled(trials, args.recycle, lambda: _study_done(args), timeout=args.timeout,
                        log=_log, died=lambda pid, how: _guarded(lambda: _release(args, pid, how)))
    if code == 0:
        _print_summary(_open_study(args))
    return code


def _search_here(args: argparse.Namespace, *, max_trials: int | None, timeout: float | None,
                 loaded=None, header: bool = True) -> int:
    """Run the search's trials in this process (at most ``max_trials`` of them), on the
    :class:`cifar_search.search.TrainSet` a supervisor ``loaded``, if any."""
    _import_keras_quietly()
    from cifar_search.search import run_search
    from cifar_search.training import configure_threads

    configure_threads(args.threads)
    given = {key: getattr(args, key) for key in ("seed", "max_epochs", "train_size",
                                                  "val_size", "pruner", "layers", "heartbeat")}
    given = {key: value for key, value in given.items() if value is not None}
    study = run_search(
        args.study, _storage_url(args), given=given, n_trials=args.n_trials,
        data_dir=args.data_dir, loaded=loaded, enqueue_baseline=not args.no_baseline,
        timeout=timeout, sampler_seed=args.sampler_seed, random_trials=args.random_trials,
        presets=args.preset or ([] if args.no_preset else None),
        max_trials=max_trials, header=header, log=_log,
    )
    if max_trials is None:
        _print_summary(study)
    return 0


def _study_done(args: argparse.Namespace) -> bool:
    """Whether the study's ``--n-trials`` are claimed (finished, or running on other workers).

    The supervisor forks next: it keeps no database connection open for a child to inherit.
    """
    from cifar_search.search import study_done

    return study_done(args.study, _storage_url(args), args.n_trials, _log)


def _release(args: argparse.Namespace, pid: int, how: str) -> int:
    """Fail and re-queue the trial of a trial process that died, saying how it died."""
    from cifar_search.search import release

    release(args.study, _storage_url(args), pid, how, _log)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """Start ``-k`` search processes with the same flags and an equal share of the cores."""
    from cifar_search.processes import run_workers, without_option

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.processes)
    _log(f"starting {args.processes} workers with {threads} thread(s) each")
    flags = without_option(args.argv[1:], ("-k", "--processes", "--storage"))
    env = {**os.environ, STORAGE_ENV: _storage_url(args)}
    codes = run_workers(flags, args.processes, threads, env)
    if EXIT_INTERRUPTED in codes:  # Ctrl-C: each worker said so and re-queued its trial.
        return EXIT_INTERRUPTED
    failed = [code for code in codes if code]
    if failed:
        raise CifarSearchError(f"{len(failed)} of {len(codes)} workers failed "
                               f"(exit codes {sorted(set(failed))})")
    return 0


def _print_summary(study) -> None:
    from cifar_search.report import summary_line

    _log(summary_line(study))


def cmd_status(args: argparse.Namespace) -> int:
    from cifar_search.api import results

    _log(results(args.study, storage=_storage_url(args)).table())
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    _import_keras_quietly()
    from cifar_search.api import finalize

    record = finalize(args.study, storage=_storage_url(args), data_dir=args.data_dir,
                      force=args.force, repeats=args.repeats, output_dir=args.output_dir,
                      threads=args.threads, log=_log)
    for run in record.runs:
        _log(f"seed {run['seed']}: test accuracy {run['test_accuracy']:.4f} "
             f"(loss {run['test_loss']:.4f}), trained in {run['train_seconds']:.0f}s, "
             f"saved to {run['model_path']}")
    spread = f" ± {record.test_accuracy_std:.4f}" if record.repeats > 1 else ""
    _log(f"test accuracy {record.test_accuracy:.4f}{spread} for trial {record.trial} "
         f"retrained {record.epochs} epochs on {record.train_images} images; "
         f"evaluation #{record.number} of this study")
    _log(f"note: {record.test_note}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cifar_search.api import report

    _log(str(report(args.study, storage=_storage_url(args), output=args.output)))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from cifar_search.dashboard import artifact_store

    stored = _open_storage(args)
    _open_study(args, stored)  # Refuses an unknown study before the server starts.
    if args.host not in LOOPBACK:
        print(f"cifar-search: warning: the dashboard has no login, and anyone who can reach "
              f"{args.host}:{args.port} can change or delete the studies in this storage",
              file=sys.stderr, flush=True)
    _log(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/ "
         f"(study {args.study!r} and the others in its storage); Ctrl-C stops it")
    try:  # Returns on Ctrl-C: the server (bottle) catches it.
        optuna_dashboard.run_server(stored, host=args.host, port=args.port,
                                    artifact_store=artifact_store(args.study))
    except OSError as exc:
        raise CifarSearchError(f"cannot serve on {args.host}:{args.port}: "
                               f"{exc.strerror or exc}") from exc
    _log("dashboard stopped")
    return 0


def _study_name(text: str) -> str:
    from cifar_search.storage import check_study_name

    try:
        return check_study_name(text)
    except CifarSearchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, type=_study_name,
                        help="study name: letters, digits, '.', '_', '-'")
    parser.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                        help="SQLAlchemy URL of the study database (default: "
                        f"${STORAGE_ENV}, else sqlite:///studies/<study>.db; PostgreSQL: "
                        "postgresql://user@host/db)")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="the 'cifar-10-batches-py' folder (default: "
                        "$CIFAR10_DIR, else download it the way keras.datasets does)")
    parser.add_argument("--threads", type=int, help="TensorFlow CPU threads for this worker "
                        "(default: all cores)")


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse says "invalid integer value: 'x'".
    return parse


_positive, _non_negative = _at_least(1), _at_least(0)


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, got {text}")
    return value


def _add_search(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    _add_data(parser)
    parser.add_argument("--n-trials", type=_positive, default=20,
                        help="finished trials the study should hold in total (default: 20)")
    parser.add_argument("--max-epochs", type=_positive,
                        help="epochs per trial, at most (frozen; default: 15)")
    parser.add_argument("--train-size", type=_positive,
                        help="train on this many of the 40K training images (frozen; "
                        "default: all)")
    parser.add_argument("--val-size", type=_positive,
                        help="validate on this many of the 10K validation images (frozen; "
                        "default: all)")
    parser.add_argument("--seed", type=int, help="seed of the train/validation split and of "
                        "training (frozen; default: 0)")
    parser.add_argument("--pruner", choices=PRUNERS,
                        help="stop lagging trials early: 'screen' trains each trial 2 epochs "
                        "with its schedule fitted to them first and goes on only with the top "
                        "quarter (budgets over 4 epochs); 'ladder' keeps the top third, then "
                        "trains them 6 epochs and keeps the top third again (budgets over 12); "
                        "'median' judges from half the epochs (frozen; default: screen)")
    parser.add_argument("--layers", choices=("variants", "prescribed"),
                        help="'prescribed': search the recipe for the bare prescribed layers "
                        "only; 'variants': batch norm and dropout may be added (frozen; "
                        "default: variants)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not enqueue the seed's baseline (RMSprop, lr 1e-4, batch 128) "
                        "as the first trial of a new study")
    parser.add_argument("--timeout", type=_seconds, help="stop starting trials after this many "
                        "seconds")
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help="enqueue a named, measured configuration as a warm-start trial "
                        "(repeatable; once per study): " + ", ".join(PRESETS) + " (default for "
                        "a new study: " + "; ".join(f"{v} with --layers {k}"
                                                     for k, v in DEFAULT_PRESETS.items()) + ")")
    parser.add_argument("--no-preset", action="store_true",
                        help="start a new study without the default warm-start preset "
                        "(presets named with --preset are still enqueued)")
    parser.add_argument("--sampler-seed", type=int,
                        help="seed of the sampler's proposals (default: the study's --seed); "
                        "each trial's draw is seeded by it and the trial's number, so a search "
                        "is repeatable and workers sharing a study never draw alike")
    parser.add_argument("--random-trials", type=_non_negative, default=RANDOM_TRIALS,
                        metavar="N", help="trials the sampler draws at random before TPE "
                        f"models the study (finished or pruned ones; default: {RANDOM_TRIALS})")
    parser.add_argument("--recycle", type=_non_negative, default=DEFAULT_RECYCLE, metavar="N",
                        help="run every N trials in a fresh process forked from this one "
                        "(which loads the data once), so the memory TensorFlow keeps from "
                        "each trained model is returned (0: all in this process; default: "
                        f"{DEFAULT_RECYCLE}, a process per trial; Linux only, elsewhere all "
                        "trials run in this process)")
    parser.add_argument("--heartbeat", type=_positive,
                        help="seconds between heartbeats; a trial silent for three of them is "
                        "failed and retried by another worker (frozen; default: 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cifar-search",
        description="Honest, durable Optuna searches for the prescribed CIFAR-10 CNN.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        sub.set_defaults(func=func)
        return sub

    _add_search(command(
        "search", cmd_search, "run or join a search (creates the study, or resumes it)",
        "Run trials until the study holds --n-trials finished trials. Settings marked "
        "(frozen) are written into the study by its first run; later runs and other workers "
        "read them and refuse a different value."))

    workers = command(
        "workers", cmd_workers, "run a search with K worker processes on this machine",
        "Start K 'cifar-search search' processes on the same study, each with its share of "
        "the CPU cores, and wait for them. Ctrl-C stops them all; their trials are re-queued.")
    workers.add_argument("-k", "--processes", type=_positive, default=2,
                         help="number of worker processes (default: 2)")
    _add_search(workers)

    _add_common(command("status", cmd_status, "table of a study's trials"))

    final = command(
        "finalize", cmd_finalize,
        "retrain the best trial on train+validation and evaluate on test once",
        "Retrain the best completed trial's configuration on all training images (train + "
        "validation) for its best epoch count, then evaluate it once on the 10K test set and "
        "record the result in the study. A second evaluation needs --force and is recorded "
        "as well.")
    _add_common(final)
    _add_data(final)
    final.add_argument("--force", action="store_true",
                       help="evaluate on the test set again although it was done before")
    final.add_argument("--repeats", type=_positive, default=1,
                       help="retrain with this many seeds and evaluate each once, to show "
                       "the spread (default: 1)")
    final.add_argument("--output-dir", help="where to save the model (default: "
                       "studies/<study>/)")

    rep = command(
        "report", cmd_report, "write an HTML report of a study (opens offline) and print its path",
        "Write index.html with the trial counts, a comparison of the structure families "
        "against the seed's published numbers, a short analysis, learning curves of the best "
        "trials and of the final model, and Optuna's views; PNGs of the curves go beside it. "
        "Each finished trial's curves PNG is also attached to it for 'cifar-search dashboard' "
        "(once per trial). Needs Chrome or Chromium for the PNGs.")
    _add_common(rep)
    rep.add_argument("--output", help="folder of the report (default: studies/<study>/report/)")

    dash = command(
        "dashboard", cmd_dashboard, "serve optuna-dashboard on the study's storage",
        "Serve optuna-dashboard on the study's storage, with the curves PNGs that "
        "'cifar-search report' attached to the trials (studies/<study>/artifacts/).")
    _add_common(dash)
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: 127.0.0.1, this machine only)")
    dash.add_argument("--port", type=_port, default=8080,
                      help="port to listen on (default: 8080)")
    return parser


def _import_keras_quietly() -> None:
    """Load TensorFlow without its start-up chatter burying the progress lines.

    TensorFlow prints a few C++ lines while it loads, before its log level applies, so those
    are dropped by pointing the stderr file descriptor at /dev/null during the import only.
    Only the commands that train call this: the others (and a search's supervisor) stay light.
    A Ctrl-C or SIGTERM is acted on once the import is done: one raised inside TensorFlow's
    import left it half-registered (a soak worker's traceback: "'TensorSpec' object has no
    attribute '_type_spec'").
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    interrupts = Interrupts()
    try:
        with interrupts.installed():
            import keras  # noqa: F401  (loads TensorFlow)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    interrupts.check()


def main(argv: Sequence[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ctrl-C: KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.unraisablehook = drop_interrupt_reports
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    import optuna

    # Our own lines report every trial; Optuna's would repeat them with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return _guarded(lambda: args.func(args))


def _guarded(command: Callable[[], int]) -> int:
    """Run ``command``; a problem the user can fix is one line and exit 2, a study locked by
    another process one line and exit 75 (a supervisor tries again), Ctrl-C exit 130."""
    try:
        return command()
    except StudyLockedError as exc:
        print(f"cifar-search: error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except CifarSearchError as exc:
        print(f"cifar-search: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        # Said of every command, a search stopped before its study exists included.
        print("cifar-search: interrupted; what was recorded is kept: run the same command to "
              "go on", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> Any:
    sys.exit(main())
