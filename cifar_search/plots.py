"""Plotly figures of a study: learning curves, the final model, and Optuna's own views.

Figures are built from the records the search and ``finalize`` store on the study, so they
can be drawn from any copy of the storage, while a search is still running, without Keras.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import optuna.visualization as ov
import plotly.graph_objects as go
import plotly.io as pio
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from cifar_search.config import TrainConfig
from cifar_search.data import TEST_NOTE
from cifar_search.errors import CifarSearchError
from cifar_search.report import accuracy, plural

TARGET_NAME = "validation accuracy"
TRAIN, VALIDATION, TEST = "#1f77b4", "#ff7f0e", "#d62728"
PNG_SIZE = {"width": 1000, "height": 420}
# Renders of one figure before write_pngs gives up (see there).
RENDER_ATTEMPTS = 3


@dataclass(frozen=True)
class View:
    """One Optuna view of the study with Optuna's caveats, or why it was left out (no figure)."""

    title: str
    figure: go.Figure | None
    note: str = ""


def best_trials(study: optuna.Study, count: int) -> list[FrozenTrial]:
    """The ``count`` completed trials with the highest validation accuracy, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=accuracy, reverse=True)[:count]


def _curves_figure(title: str, subtitle: str = "") -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    figure.update_layout(title={"text": title, "subtitle": {"text": subtitle}},
                         template="plotly_white", margin={"t": 100},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.2})
    figure.update_xaxes(title_text="epoch", dtick=1)
    return figure


def _add_line(figure: go.Figure, values: list[float], col: int, name: str, color: str,
              dash: str = "solid", legend: bool = True) -> None:
    figure.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=values, name=name,
                                mode="lines+markers", legendgroup=name,
                                showlegend=legend and col == 1,
                                line={"color": color, "dash": dash}), row=1, col=col)


def trial_curves(trial: FrozenTrial) -> go.Figure:
    """Train and validation loss and accuracy per epoch, with the best epoch marked."""
    history = trial.user_attrs.get("history", {})
    config = trial.user_attrs.get("train_config")
    described = TrainConfig.from_dict(config).describe() if config else "no configuration"
    figure = _curves_figure(f"trial {trial.number} ({trial.user_attrs.get('family', '?')}, "
                            f"{trial.state.name.lower()}): {described}")
    for col, key in ((1, "loss"), (2, "accuracy")):
        _add_line(figure, history.get(key, []), col, "train", TRAIN)
        _add_line(figure, history.get(f"val_{key}", []), col, "validation", VALIDATION, "dash")
    if "best_epoch" in trial.user_attrs:
        figure.add_vline(x=trial.user_attrs["best_epoch"], line={"dash": "dot", "color": "grey"},
                         annotation_text="best epoch", annotation_position="bottom right")
    return figure


def final_curves(record: Mapping[str, Any]) -> go.Figure:
    """The final model's training curves and its single test-set point after the last epoch.

    When ``finalize`` retrained with several seeds (``runs``), each model has its curves and
    its test point, which shows their spread.
    """
    runs = record.get("runs") or [record]
    forced = " (forced)" if record["forced"] else ""
    seeds = f", {plural(len(runs), 'seed')}" if len(runs) > 1 else ""
    figure = _curves_figure(f"final model #{record['number']}{forced}: trial {record['trial']} "
                            f"retrained for {plural(record['epochs'], 'epoch')} on "
                            f"{record['train_images']} images{seeds}",
                            f"test points: {TEST_NOTE}")
    for col, key in ((1, "loss"), (2, "accuracy")):
        for i, run in enumerate(runs):
            _add_line(figure, run["history"].get(key, []), col,
                      "train (train+validation images)", TRAIN, legend=i == 0)
        figure.add_trace(go.Scatter(x=[record["epochs"]] * len(runs),
                                    y=[run[f"test_{key}"] for run in runs],
                                    name="test (once per model)", mode="markers",
                                    legendgroup="test", showlegend=col == 1,
                                    marker={"color": TEST, "size": 12, "symbol": "star"}),
                         row=1, col=col)
    return figure


def _view(title: str, plot: Callable[[], go.Figure], available: int, needed: int,
          what: str) -> View:
    """Draw ``plot`` if the study has ``needed`` of ``what``, else say why not.

    Optuna's warnings while drawing (e.g. that an importance rests on too few trials) become
    the view's note, so they reach the reader of the report instead of the terminal.
    """
    if available < needed:
        return View(title, None, f"skipped: needs at least {needed} {what}, the study has "
                                 f"{available}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = plot()
    notes = dict.fromkeys(str(w.message) for w in caught
                          if not issubclass(w.category, optuna.exceptions.ExperimentalWarning))
    return View(title, figure, " ".join(notes))


def optuna_views(study: optuna.Study) -> list[View]:
    """Optuna's plotly views of the study, each skipped with a note when it has too few trials."""
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    reported = sum(bool(t.intermediate_values) for t in trials)
    target: dict[str, Any] = {"target_name": TARGET_NAME}
    return [
        _view("Optimization history", lambda: ov.plot_optimization_history(study, **target),
              complete, 1, "completed trial(s)"),
        _view("Validation accuracy per epoch (intermediate values)",
              lambda: ov.plot_intermediate_values(study), reported, 1,
              "trial(s) with a reported epoch"),
        _view("Hyperparameter importances", lambda: ov.plot_param_importances(study, **target),
              complete, 2, "completed trials"),
        _view("Parallel coordinates", lambda: ov.plot_parallel_coordinate(study, **target),
              complete, 1, "completed trial(s)"),
        _view("Slice plot", lambda: ov.plot_slice(study, **target), complete, 1,
              "completed trial(s)"),
    ]


def write_pngs(figures: Mapping[Path, go.Figure]) -> None:
    """Export the figures as PNG files with kaleido, which drives a local Chrome or Chromium.

    One browser renders them all. Kaleido 1.5 can fail a render when the browser's page has
    not finished loading (``kaleido_scopes is not defined``, seen on a loaded machine), and
    plotly's ``write_images`` drops the error it returns: a figure is then silently missing.
    So this asks kaleido directly, renders again whatever failed, up to ``RENDER_ATTEMPTS``
    times, and raises CifarSearchError (with kaleido's reason) rather than leave a file out.
    """
    import kaleido  # Deferred: plotly imports it only to write images, too.

    for path in figures:
        path.unlink(missing_ok=True)  # A file left is one this call wrote.
    specs = [{"fig": figure.to_dict(), "path": path,
              "opts": {"format": "png", "scale": 1, **PNG_SIZE}}
             for path, figure in figures.items()]
    # What plotly's write_images hands kaleido.
    kopts = {key: value for key in ("plotlyjs", "mathjax", "headers")
             if (value := getattr(pio.defaults, key, None))}
    reason = "no reason given"
    for _ in range(RENDER_ATTEMPTS):
        pending = [spec for spec in specs if not spec["path"].exists()]
        if not pending:
            return
        try:
            errors = kaleido.write_fig_from_object_sync(pending, kopts=kopts)
        except Exception as exc:  # No browser, or it died: one line, no traceback.
            raise CifarSearchError(
                f"cannot write PNG files ({_first_line(exc)}): kaleido needs Chrome or "
                f"Chromium (Debian: apt-get install chromium, or set BROWSER_PATH to the "
                f"browser)") from exc
        reason = next((_first_line(e) for e in errors or ()), reason)
    missing = [spec["path"].name for spec in specs if not spec["path"].exists()]
    if missing:
        raise CifarSearchError(f"kaleido could not render {', '.join(missing)} in "
                               f"{RENDER_ATTEMPTS} attempts: {reason}")


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
