"""``cifar-search``: argument parsing and messages only; the work is done by the modules.

Problems the user can fix come out as one ``cifar-search: error: ...`` line and exit code 2;
Ctrl-C exits with 130 after the study has been left consistent.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cifar_search.errors import CifarSearchError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _log(message: str) -> None:
    print(message, flush=True)


def _storage_url(args: argparse.Namespace) -> str:
    from cifar_search.storage import default_url

    return args.storage or default_url(args.study)


def _open_study(args: argparse.Namespace):
    from cifar_search import storage

    return storage.load_study(args.study, storage.open_storage(_storage_url(args)))


def cmd_search(args: argparse.Namespace) -> int:
    from cifar_search.search import run_search
    from cifar_search.training import configure_threads

    configure_threads(args.threads)
    given = {key: getattr(args, key) for key in ("seed", "max_epochs", "train_size",
                                                  "val_size", "pruner")}
    given = {key: value for key, value in given.items() if value is not None}
    study = run_search(
        args.study, _storage_url(args), given=given, n_trials=args.n_trials,
        data_dir=args.data_dir, enqueue_baseline=not args.no_baseline, timeout=args.timeout,
        heartbeat=args.heartbeat, log=_log,
    )
    _print_summary(study)
    return 0


def _print_summary(study) -> None:
    from cifar_search.report import summary_line

    _log(summary_line(study))


def cmd_status(args: argparse.Namespace) -> int:
    from cifar_search.report import status_table

    _log(status_table(_open_study(args)))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from cifar_search.finalize import finalize
    from cifar_search.training import configure_threads

    configure_threads(args.threads)
    study = _open_study(args)
    output = Path(args.output_dir) if args.output_dir else Path("studies") / args.study
    record = finalize(study, data_dir=args.data_dir, output_dir=output, force=args.force,
                      log=_log)
    _log(f"test accuracy {record['test_accuracy']:.4f} (loss {record['test_loss']:.4f}) for "
         f"trial {record['trial']} retrained {record['epochs']} epochs on "
         f"{record['train_images']} images in {record['train_seconds']:.0f}s; evaluation "
         f"#{record['number']} of this study; model saved to {record['model_path']}")
    _log(f"note: {record['test_note']}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", help="SQLAlchemy URL of the study database "
                        "(default: sqlite:///studies/<study>.db; PostgreSQL: "
                        "postgresql://user@host/db)")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="the 'cifar-10-batches-py' folder (default: "
                        "$CIFAR10_DIR, else download it the way keras.datasets does)")
    parser.add_argument("--threads", type=int, help="TensorFlow CPU threads for this worker "
                        "(default: all cores)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar-search",
        description="Honest, durable Optuna searches for the prescribed CIFAR-10 CNN.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = commands.add_parser(
        "search", help="run or join a search (creates the study, or resumes it)",
        description="Run trials until the study holds --n-trials finished trials. Settings "
        "marked (frozen) are written into the study by its first run; later runs and other "
        "workers read them and refuse a different value.")
    _add_common(search)
    _add_data(search)
    search.add_argument("--n-trials", type=_positive, default=20,
                        help="finished trials the study should hold in total (default: 20)")
    search.add_argument("--max-epochs", type=_positive,
                        help="epochs per trial, at most (frozen; default: 15)")
    search.add_argument("--train-size", type=_positive,
                        help="train on this many of the 40K training images (frozen; "
                        "default: all)")
    search.add_argument("--val-size", type=_positive,
                        help="validate on this many of the 10K validation images (frozen; "
                        "default: all)")
    search.add_argument("--seed", type=int, help="seed of the train/validation split and of "
                        "training (frozen; default: 0)")
    search.add_argument("--pruner", choices=("median", "hyperband", "none"),
                        help="stop lagging trials early (frozen; default: median)")
    search.add_argument("--no-baseline", action="store_true",
                        help="do not enqueue the seed's baseline (RMSprop, lr 1e-4, batch 128) "
                        "as the first trial of a new study")
    search.add_argument("--timeout", type=float, help="stop starting trials after this many "
                        "seconds")
    search.add_argument("--heartbeat", type=_positive, default=10,
                        help="seconds between this worker's heartbeats; a trial silent for "
                        "three of them is failed and retried by another worker (default: 10)")
    search.set_defaults(func=cmd_search)

    status = commands.add_parser("status", help="table of a study's trials")
    _add_common(status)
    status.set_defaults(func=cmd_status)

    final = commands.add_parser(
        "finalize", help="retrain the best trial on train+validation and evaluate on test once",
        description="Retrain the best completed trial's configuration on all training images "
        "(train + validation) for its best epoch count, then evaluate it once on the 10K test "
        "set and record the result in the study. A second evaluation needs --force and is "
        "recorded as well.")
    _add_common(final)
    _add_data(final)
    final.add_argument("--force", action="store_true",
                       help="evaluate on the test set again although it was done before")
    final.add_argument("--output-dir", help="where to save the model (default: "
                       "studies/<study>/)")
    final.set_defaults(func=cmd_finalize)
    return parser


def _quiet_libraries() -> None:
    """Keep TensorFlow's start-up chatter from burying the progress lines.

    TensorFlow prints a few C++ lines while it loads, before its log level applies, so those
    are dropped by pointing the stderr file descriptor at /dev/null during the import only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401  (loads TensorFlow)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import optuna

    # Our own lines report every trial; Optuna's would repeat them with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except CifarSearchError as exc:
        print(f"cifar-search: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cifar-search: interrupted; the study is saved, run the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> Any:
    sys.exit(main())
