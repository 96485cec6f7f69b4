"""Text views of a study: the trial table of ``cifar-search status`` and one-line summaries."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from cifar_search.config import TrainConfig

TEST_NOTE = "23 of the 10,000 test images in this CIFAR-10 copy are JPEG-decoded (lossy)"


def _row(trial: optuna.trial.FrozenTrial) -> list[str]:
    attrs = trial.user_attrs
    config = attrs.get("train_config")
    history = attrs.get("history", {}).get("val_accuracy", [])
    best = max(history) if history else None
    duration = trial.duration.total_seconds() if trial.duration else None
    return [
        str(trial.number),
        trial.state.name,
        TrainConfig.from_dict(config).describe() if config else "-",
        f"{best:.4f}" if best is not None else "-",
        str(history.index(best) + 1) if best is not None else "-",
        str(len(history)),
        f"{duration:.0f}s" if duration is not None else "-",
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_table(study: optuna.Study) -> str:
    """A table of every trial: state, configuration, best validation accuracy, epochs, time."""
    trials = study.get_trials(deepcopy=False)
    header = ["#", "state", "configuration", "best val", "at epoch", "epochs", "time"]
    lines = [f"study {study.study_name}: {len(trials)} trials", ""]
    lines.append(_table(header, [_row(t) for t in trials]) if trials else "(no trials yet)")
    lines += ["", summary_line(study)]
    for record in study.user_attrs.get("test_evaluations", []):
        lines.append(
            f"test evaluation #{record['number']}{' (forced)' if record['forced'] else ''}: "
            f"accuracy {record['test_accuracy']:.4f} from trial {record['trial']} retrained "
            f"{record['epochs']} epochs on {record['train_images']} images ({TEST_NOTE})"
        )
    return "\n".join(lines)


def summary_line(study: optuna.Study) -> str:
    """Trial counts by state and the best validation accuracy so far."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    shown = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    tail = (f"; best validation accuracy {best.value:.4f} (trial {best.number})"
            if best else "; no completed trial yet")
    return f"{len(trials)} trials ({shown or 'none'}){tail}"
