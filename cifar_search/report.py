"""Views of a study: the text table of ``cifar-search status``, one-line summaries, and the
HTML report of ``cifar-search report`` with its curve PNGs."""

from __future__ import annotations

import datetime
import html
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from cifar_search.config import TrainConfig
from cifar_search.data import TEST_NOTE
from cifar_search.ledger import DONE, HELD_ATTR, PROMOTED_ATTR, Retry, evaluations, given_up
from cifar_search.screening import epochs_trained, seconds_trained

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from cifar_search.plots import View

STATUS_HEADER = ["#", "state", "configuration", "best val", "at epoch", "epochs", "time"]


def _row(trial: optuna.trial.FrozenTrial) -> list[str]:
    attrs = trial.user_attrs
    config = attrs.get("train_config")
    history = attrs.get("history", {}).get("val_accuracy", [])
    best = max(history) if history else None
    duration = trial.duration.total_seconds() if trial.duration else None
    state = trial.state.name
    if HELD_ATTR in attrs:
        state += " (held)"
    if PROMOTED_ATTR in attrs:
        state += f" (promoted from {attrs[PROMOTED_ATTR]})"
    return [
        str(trial.number),
        state,
        TrainConfig.from_dict(config).describe() if config else "-",
        f"{best:.4f}" if best is not None else "-",
        str(history.index(best) + 1) if best is not None else "-",
        str(epochs_trained(attrs)),
        f"{duration:.0f}s" if duration is not None else "-",
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown (GitHub-flavoured) table, as optuna-dashboard's notes render it."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |"
                     for line in lines)


def status_table(study: optuna.Study) -> str:
    """A table of every trial: state, configuration, best validation accuracy, epochs, time."""
    trials = study.get_trials(deepcopy=False)
    lines = [f"study {study.study_name}: {len(trials)} trials", ""]
    lines.append(_table(STATUS_HEADER, [_row(t) for t in trials]) if trials
                 else "(no trials yet)")
    lines += ["", summary_line(study)]
    for number in given_up(trials):
        lines.append(f"{Retry(number, None).describe()}; it does not count")
    for record in evaluations(study):
        forced = " (forced)" if record.forced else ""
        if record.status != DONE:
            lines.append(f"test evaluation #{record.number}{forced}: reserved at "
                         f"{record.reserved_at} by {record.worker} for trial {record.trial} "
                         f"and not completed (the test set may have been read; it counts)")
            continue
        lines.append(
            f"test evaluation #{record.number}{forced}: accuracy {record.test_accuracy:.4f} "
            f"from trial {record.trial} retrained {record.epochs} epochs on "
            f"{record.train_images} images ({TEST_NOTE})"
        )
    return "\n".join(lines)


def accuracy(trial: optuna.trial.FrozenTrial) -> float:
    """The validation accuracy of a completed trial (its value)."""
    assert trial.value is not None, f"trial {trial.number} has no value"
    return trial.value


def summary_line(study: optuna.Study) -> str:
    """Trial counts by state and the best validation accuracy so far."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    shown = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=accuracy) if complete else None
    tail = (f"; best validation accuracy {best.value:.4f} (trial {best.number})"
            if best else "; no completed trial yet")
    return f"{len(trials)} trials ({shown or 'none'}){tail}"


# The seed assignment's published test accuracies (%) for the structures it tried: the model
# trained on the 40K, and the same after retraining on all 50K training images.
SEED_REFERENCE: dict[str, tuple[float, float]] = {
    "baseline": (66.02, 70.45),
    "bn+aug": (69.35, 70.15),
    "bn+dropout": (71.03, 71.82),
}
CURVE_TRIALS = 3
CURVES_FILENAME = "trial-{number}-curves.png"


@dataclass(frozen=True)
class FamilyRow:
    """One row of the structure comparison: the trials of one family (baseline, bn, ...)."""

    family: str
    trials: int
    complete: int
    pruned: int
    failed: int
    best: float | None
    median: float | None
    epochs_to_best: float | None
    seconds_per_epoch: float | None

    @property
    def reference(self) -> tuple[float, float] | None:
        return SEED_REFERENCE.get(self.family)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _family_row(family: str, trials: list[optuna.trial.FrozenTrial]) -> FamilyRow:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    values = [accuracy(t) for t in complete]
    seconds = [s for t in trials for s in seconds_trained(t.user_attrs)]
    return FamilyRow(
        family=family,
        trials=len(trials),
        complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best=max(values) if values else None,
        median=_median(values),
        epochs_to_best=_median([t.user_attrs["best_epoch"] for t in complete]),
        seconds_per_epoch=_median(seconds),
    )


def structure_rows(study: optuna.Study) -> list[FamilyRow]:
    """Per family, over its finished trials: counts, validation accuracy, epochs, epoch time.

    Accuracies and epochs to best are over completed trials only; seconds per epoch is the
    median over every epoch the family's finished trials ran. Best median first.
    """
    by_family: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state.is_finished() and "family" in trial.user_attrs:
            by_family.setdefault(trial.user_attrs["family"], []).append(trial)
    rows = [_family_row(family, trials) for family, trials in by_family.items()]
    return sorted(rows, key=lambda r: (r.median is None, -(r.median or 0.0), r.family))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _points(difference: float) -> str:
    return f"{100 * difference:.2f} percentage points"


def _known(value: float | None) -> float:
    """A figure of a ranked family (one with completed trials), which is never missing."""
    assert value is not None
    return value


def _ranking_sentences(ranked: list[FamilyRow]) -> list[str]:
    top = ranked[0]
    if len(ranked) == 1:
        return [f"Only the {top.family} family has completed trials ({top.complete}): median "
                f"validation accuracy {_pct(top.median)}, best {_pct(top.best)}."]
    second = ranked[1]
    lead = (f"By median validation accuracy of its completed trials, {top.family} leads with "
            f"{_pct(top.median)} ({plural(top.complete, 'trial')}), "
            f"{_points(_known(top.median) - _known(second.median))} ahead of {second.family} "
            f"({_pct(second.median)})")
    baseline = next((r for r in ranked[2:] if r.family == "baseline"), None)
    if baseline is not None:
        lead += (f" and {_points(_known(top.median) - _known(baseline.median))} ahead of the "
                 f"baseline ({_pct(baseline.median)})")
    best = max(ranked, key=lambda r: _known(r.best))
    runner_up = max((r for r in ranked if r is not best), key=lambda r: _known(r.best))
    return [f"{lead}.", f"The best single trial is in {best.family} ({_pct(best.best)}), "
            f"{_points(_known(best.best) - _known(runner_up.best))} above the best of "
            f"{runner_up.family} ({_pct(runner_up.best)})."]


def _cost_sentence(ranked: list[FamilyRow]) -> str | None:
    timed = [(r, r.seconds_per_epoch) for r in ranked if r.seconds_per_epoch is not None]
    if not timed:
        return None
    (top, top_s), (cheapest, cheapest_s) = timed[0], min(timed, key=lambda rs: rs[1])
    if top is cheapest:
        return f"{top.family} is also the cheapest per epoch ({top_s:.1f}s median, wall-clock)."
    return (f"A median epoch of {top.family} took {top_s:.1f}s against {cheapest_s:.1f}s for "
            f"{cheapest.family}, the cheapest: {top_s / cheapest_s:.2f}x (wall-clock, shared "
            f"with any concurrent workers).")


def _gap_sentence(best: optuna.trial.FrozenTrial) -> str:
    epoch = best.user_attrs["best_epoch"]
    history = best.user_attrs["history"]
    train, val = history["accuracy"][epoch - 1], history["val_accuracy"][epoch - 1]
    return (f"At its best epoch ({epoch}) the best trial, #{best.number}, had "
            f"{_pct(train)} training accuracy against {_pct(val)} validation accuracy: a "
            f"train-validation gap of {100 * (train - val):+.2f} percentage points (a large "
            f"positive gap indicates overfitting).")


def analysis(study: optuna.Study, rows: list[FamilyRow]) -> str:
    """A few sentences that state only what the structure table and the best trial show."""
    ranked = [r for r in rows if r.median is not None]
    if not ranked:
        return "No trial has completed yet, so there is nothing to compare."
    sentences = _ranking_sentences(ranked)
    if cost := _cost_sentence(ranked):
        sentences.append(cost)
    sentences.append(_gap_sentence(study.best_trial))
    few = [r.family for r in ranked if r.complete < 3]
    if few:
        sentences.append(f"The figures for {', '.join(few)} rest on fewer than 3 completed "
                         f"trials each.")
    pruned = sum(r.pruned for r in rows)
    if pruned:
        sentences.append(f"Pruned trials ({pruned}) are left out of the accuracy columns.")
    return " ".join(sentences)


STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 90%; }
"""


def _html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(figure: go.Figure, png: Path | None = None) -> str:
    """A figure as a div that uses the page's one inline copy of plotly.js, with its PNG."""
    div = figure.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})
    return div + (f'<p class="note"><a href="{html.escape(png.name)}">PNG</a></p>' if png else "")


def _counts_section(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    rows = [[state.name.lower(), str(sum(t.state == state for t in trials))]
            for state in TrialState]
    rows = [row for row in rows if row[1] != "0"] + [["total", str(len(trials))]]
    settings = ", ".join(f"{k} {v}" for k, v in study.user_attrs.get("config", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in study.user_attrs.get("versions", {}).items())
    return ("<h2>Trials by state</h2>" + _html_table(["state", "trials"], rows, "counts")
            + f"<p>{html.escape(summary_line(study))}</p>"
            + _note(f"study settings: {settings or 'none recorded'}; data fingerprint "
                    f"{study.user_attrs.get('data_fingerprint', '-')}; {versions}"))


def _structure_cells(rows: list[FamilyRow]) -> tuple[list[str], list[list[str]]]:
    header = ["family", "trials run", "complete", "pruned", "failed", "best val acc",
              "median val acc", "median epochs to best", "median s/epoch",
              "seed reference: test acc† of the 40K model / after 50K retraining"]
    cells = [[r.family, str(r.trials), str(r.complete), str(r.pruned), str(r.failed),
              _pct(r.best), _pct(r.median),
              "-" if r.epochs_to_best is None else f"{r.epochs_to_best:g}",
              "-" if r.seconds_per_epoch is None else f"{r.seconds_per_epoch:.2f}",
              f"{r.reference[0]:.2f}% / {r.reference[1]:.2f}%" if r.reference else "-"]
             for r in rows]
    return header, cells


def structure_text(study: optuna.Study) -> str:
    """The report's structure comparison and analysis, as plain text (for a notebook)."""
    rows = structure_rows(study)
    header, cells = _structure_cells(rows)
    table = _table(header, cells) if cells else "No finished trial yet."
    return f"{table}\n\n{analysis(study, rows)}\n† Test-set numbers: {TEST_NOTE}."


def structure_markdown(study: optuna.Study) -> str:
    """The structure comparison and analysis in Markdown: the study's note in the dashboard."""
    rows = structure_rows(study)
    header, cells = _structure_cells(rows)
    table = markdown_table(header, cells) if cells else "No finished trial yet."
    return (f"### Structures\n\n{table}\n\n### Analysis\n\n{analysis(study, rows)}\n\n"
            f"† Test-set numbers: {TEST_NOTE}.")


def _structure_section(rows: list[FamilyRow]) -> str:
    header, cells = _structure_cells(rows)
    return ("<h2>Structure comparison</h2>"
            + (_html_table(header, cells, "structures") if cells else
               "<p>No finished trial yet.</p>")
            + _note("Accuracies and epochs to best are over completed trials; seconds per "
                    "epoch is the median over every epoch the family's finished trials ran. "
                    f"† Test-set numbers: {TEST_NOTE}."))


def _test_cells(record: dict[str, Any]) -> list[str]:
    """Test accuracy and loss; their mean (and the accuracy's spread) over several seeds."""
    repeats = record.get("repeats", 1)
    if repeats == 1:
        return [_pct(record["test_accuracy"]), f"{record['test_loss']:.4f}"]
    return [f"{_pct(record['test_accuracy'])} ± {_pct(record['test_accuracy_std'])} (mean "
            f"of {repeats} seeds)", f"{record['test_loss']:.4f} (mean)"]


def _final_section(finals: list[tuple[dict[str, Any], Path, go.Figure]], name: str) -> str:
    """Each test evaluation: its numbers, each with the test-set note, and its curves."""
    if not finals:
        return ("<h2>Final model</h2><p>Not evaluated on the test set yet: run "
                f"<code>cifar-search finalize --study {html.escape(name)}</code>.</p>")
    parts = ["<h2>Final model</h2>"]
    for record, png, figure in finals:
        parts.append(f"<h3>Test evaluation #{record['number']}"
                     f"{' (forced)' if record['forced'] else ''}</h3>")
        parts.append(_html_table(
            ["trial", "its val acc", "epochs", "training images", "training seconds",
             "test acc†", "test loss†", "model", "time"],
            [[str(record["trial"]), _pct(record["val_accuracy"]), str(record["epochs"]),
              str(record["train_images"]), f"{record['train_seconds']:.0f}",
              *_test_cells(record), record["model_path"], record["time"]]],
            f"final-{record['number']}"))
        parts.append(_note(f"† {TEST_NOTE}."))
        parts.append(_figure(figure, png))
    return "".join(parts)


def _views_section(views: list[View]) -> str:
    parts = ["<h2>Optuna views</h2>"]
    for view in views:
        parts.append(f"<h3>{html.escape(view.title)}</h3>")
        if view.figure is not None:
            parts.append(_figure(view.figure))
        if view.note:
            parts.append(_note(view.note))
    return "".join(parts)


def write_report(study: optuna.Study, out_dir: Path) -> Path:
    """Write ``out_dir/index.html``, a report that opens offline, with PNG curves beside it.

    plotly.js is inlined once in the page head, so no figure needs a network to render.
    Raises CifarSearchError when the PNGs cannot be written (no Chrome or Chromium).
    """
    import plotly.offline  # Deferred, like plots: the search imports this module's text views.

    from cifar_search import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*-curves.png"):  # Trials that are no longer among the best.
        stale.unlink()
    best = plots.best_trials(study, CURVE_TRIALS)
    curves = {out_dir / CURVES_FILENAME.format(number=t.number): plots.trial_curves(t)
              for t in best}
    finals = [(record, out_dir / f"final-{record['number']}-curves.png",
               plots.final_curves(record))
              for record in (e.to_dict() for e in evaluations(study) if e.status == DONE)]
    plots.write_pngs({**curves, **{png: figure for _, png, figure in finals}})

    rows = structure_rows(study)
    trials = study.get_trials(deepcopy=False)
    name = html.escape(study.study_name)
    generated = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    sections = [
        f"<h1>Study {name}</h1>",
        _note(f"generated {generated} by cifar-search report"),
        _counts_section(study),
        _structure_section(rows),
        f'<h2>Analysis</h2><p id="analysis">{html.escape(analysis(study, rows))}</p>',
        f"<h2>Learning curves of the {len(best)} best completed trials</h2>",
        *(_figure(figure, png) for png, figure in curves.items()),
        _final_section(finals, study.study_name),
        _views_section(plots.optuna_views(study)),
        "<h2>All trials</h2>",
        _html_table(STATUS_HEADER, [_row(t) for t in trials], "trials"),
    ]
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Study {name}</title>'
            f'<style>{STYLE}</style><script type="text/javascript">'
            f'{plotly.offline.get_plotlyjs()}</script></head><body>{"".join(sections)}'
            f"</body></html>")
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
