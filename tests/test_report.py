"""The HTML report and the dashboard's curve artifacts, on a small real finalized study."""

from __future__ import annotations

import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from conftest import REPORTED, load, one_line_error, run
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from cifar_search import plots
from cifar_search.dashboard import DASHBOARD_TRIAL_ARTIFACT, GENERATED, _with_generated
from cifar_search.report import TEST_NOTE, analysis, structure_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VIEW_TITLES = ["Optimization history", "Validation accuracy per epoch", "Hyperparameter "
               "importances", "Parallel coordinates", "Slice plot"]


class Tables(HTMLParser):
    """The text of every cell of every ``<table id=...>`` in a page, row by row."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def page(reported) -> str:
    cwd, _ = reported
    return (cwd / "studies" / REPORTED / "report" / "index.html").read_text()


def test_report_prints_its_path_and_writes_pngs_beside_it(reported):
    cwd, done = reported
    assert done.stdout.strip() == f"studies/{REPORTED}/report/index.html"
    folder = cwd / "studies" / REPORTED / "report"
    study = load(cwd, REPORTED)
    expected = {f"trial-{t.number}-curves.png" for t in plots.best_trials(study, 3)}
    expected.add("final-1-curves.png")
    assert {p.name for p in folder.glob("*.png")} == expected
    for name in expected:
        png = (folder / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
        size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert size == (1000, 420)


def test_report_has_every_section(reported, page):
    _cwd, _ = reported
    for heading in (f"<h1>Study {REPORTED}</h1>", "<h2>Trials by state</h2>",
                    "<h2>Structure comparison</h2>", "<h2>Analysis</h2>",
                    "<h2>Learning curves of the 3 best completed trials</h2>",
                    "<h2>Final model</h2>", "<h3>Test evaluation #1</h3>",
                    "<h2>Optuna views</h2>", "<h2>All trials</h2>"):
        assert heading in page
    for title in VIEW_TITLES:
        assert re.search(f"<h3>{title}[^<]*</h3><div", page), title
    tables = Tables(page).tables
    assert tables["counts"][1:] == [["complete", "3"], ["total", "3"]]
    assert "3 trials (3 complete)" in page
    assert [row[0] for row in tables["trials"][1:]] == ["0", "1", "2"]
    # 3 trial curves, the final model's, and the 5 Optuna views, all drawn by the inline js
    # (each call names its figure's div by a UUID; the inlined plotly.js has the text too).
    assert len(re.findall(r'Plotly\.newPlot\(\s*"[0-9a-f-]{36}"', page)) == 9


def test_structure_table_equals_the_trials(reported, page):
    study = load(reported[0], REPORTED)
    families: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.get_trials():
        families.setdefault(trial.user_attrs["family"], []).append(trial)
    references = {"baseline": "66.02% / 70.45%", "bn+aug": "69.35% / 70.15%",
                  "bn+dropout": "71.03% / 71.82%"}
    expected = {}
    for family, trials in families.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        values = [t.value for t in complete]
        seconds = [s for t in trials for s in t.user_attrs["history"]["seconds"]]
        expected[family] = [
            family, str(len(trials)), str(len(complete)),
            str(sum(t.state == TrialState.PRUNED for t in trials)),
            str(sum(t.state == TrialState.FAIL for t in trials)),
            f"{max(values):.2%}", f"{statistics.median(values):.2%}",
            f"{statistics.median(t.user_attrs['best_epoch'] for t in complete):g}",
            f"{statistics.median(seconds):.2f}", references.get(family, "-"),
        ]
    rows = Tables(page).tables["structures"][1:]
    assert {row[0]: row for row in rows} == expected
    assert expected["baseline"][-1] == "66.02% / 70.45%"  # Trial 1 is the seed's baseline.


def test_every_test_number_carries_the_jpeg_note(page, reported):
    tables = Tables(page).tables
    (record,) = load(reported[0], REPORTED).user_attrs["test_evaluations"]
    final = tables["final-1"]
    assert f"{record['test_accuracy']:.2%}" == final[1][final[0].index("test acc†")]
    # Each table with a test column (marked †) is followed by the note before the next table.
    for table_id in ("structures", "final-1"):
        assert any("†" in cell for cell in tables[table_id][0])
        after = page[page.index(f'<table id="{table_id}"'):]
        assert TEST_NOTE in after[after.index("</table>"):].split("<table", 1)[0]
    assert page.count(f"test points: {TEST_NOTE}") == 1  # The final figure's subtitle.


def test_report_needs_no_network(page):
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", page, flags=re.IGNORECASE)
    assert not [t for t in tags if re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", t)]
    assert page.count("plotly.js v") == 1  # The library, inlined once.


def test_analysis_states_what_the_numbers_show(page, reported):
    text = page[page.index('<p id="analysis">'):].split("</p>")[0]
    study = load(reported[0], REPORTED)
    best = study.best_trial
    epoch = best.user_attrs["best_epoch"]
    history = best.user_attrs["history"]
    gap = 100 * (history["accuracy"][epoch - 1] - history["val_accuracy"][epoch - 1])
    assert f"the best trial, #{best.number}" in text and f"gap of {gap:+.2f}" in text
    leader = structure_rows(study)[0]
    assert f"{leader.family} leads with {leader.median:.2%}" in text


def test_curves_are_attached_to_each_trial_once(reported):
    cwd, _ = reported
    storage = optuna.storages.RDBStorage(f"sqlite:///{cwd}/studies/{REPORTED}.db")
    study_id = storage.get_study_id_from_name(REPORTED)

    def attached() -> dict[int, list[str]]:
        """Per trial number, the file names of the artifacts the dashboard lists for it."""
        attrs = storage.get_study_system_attrs(study_id)
        found = {}
        for number in range(3):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            prefix = DASHBOARD_TRIAL_ARTIFACT.format(trial_id=trial_id)
            found[number] = [json.loads(value)["filename"] for key, value in attrs.items()
                             if key.startswith(prefix)]
        return found

    assert attached() == {n: [f"trial-{n}-curves.png"] for n in range(3)}
    files = list((cwd / "studies" / REPORTED / "artifacts").iterdir())
    assert len(files) == 3 and all(f.read_bytes().startswith(PNG_MAGIC) for f in files)
    run("report", "--study", REPORTED, "--output", "again", cwd=cwd)
    assert attached() == {n: [f"trial-{n}-curves.png"] for n in range(3)}
    assert len(list((cwd / "studies" / REPORTED / "artifacts").iterdir())) == 3
    assert (cwd / "again" / "index.html").is_file()


def test_report_without_a_browser_is_a_one_line_error(reported):
    done = run("report", "--study", REPORTED, "--output", "nobrowser", cwd=reported[0],
               check=False, env={"BROWSER_PATH": "/nonexistent/chromium"})
    assert "kaleido needs Chrome or Chromium" in one_line_error(done)
    assert not Path(reported[0], "nobrowser", "index.html").exists()


def test_a_render_kaleido_fails_is_done_again_never_left_out(tmp_path, monkeypatch):
    """Kaleido 1.5 fails a render when its page has not loaded yet, and plotly's
    write_images dropped the error it returned: the report went on without that PNG."""
    import kaleido

    render = kaleido.write_fig_from_object_sync
    calls: list[int] = []

    def first_render_fails(specs, **kwargs):
        calls.append(len(specs))
        if len(calls) > 1:
            return render(specs, **kwargs)
        render(specs[1:], **kwargs)  # The first figure's page "had not loaded".
        return (RuntimeError("ReferenceError: kaleido_scopes is not defined"),)

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", first_render_fails)
    figures = {tmp_path / f"{name}.png": go.Figure(go.Scatter(y=[1, 3, 2])) for name in "ab"}
    plots.write_pngs(figures)
    assert calls == [2, 1]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in figures)

    monkeypatch.setattr(kaleido, "write_fig_from_object_sync",
                        lambda specs, **kwargs: (RuntimeError("the page never loads"),))
    with pytest.raises(plots.CifarSearchError, match=r"could not render a.png, b.png in 3 "
                                                     r"attempts: RuntimeError: the page never"):
        plots.write_pngs(figures)
    assert not any(path.exists() for path in figures)  # None kept from the earlier call.


def synthetic(specs: list[tuple[str, TrialState, float | None, list[float]]]) -> optuna.Study:
    """A study of finished trials (family, state, value, validation curve), no training."""
    study = optuna.create_study(direction="maximize")
    for number, (family, state, value, val) in enumerate(specs):
        study.add_trial(create_trial(
            state=state, value=value, params={"x": number},
            distributions={"x": CategoricalDistribution(tuple(range(len(specs))))},
            intermediate_values=dict(enumerate(val, 1)),
            user_attrs={"family": family, "best_epoch": val.index(max(val)) + 1,
                        "history": {"accuracy": [a + 0.1 for a in val], "val_accuracy": val,
                                    "seconds": [2.0 if "aug" in family else 1.0] * len(val)}}))
    return study


def test_structure_rows_and_analysis_on_known_numbers():
    complete, pruned, failed = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    study = synthetic([
        ("baseline", complete, 0.60, [0.5, 0.60]),
        ("baseline", complete, 0.62, [0.62, 0.6]),
        ("bn+aug", complete, 0.80, [0.7, 0.80]),
        ("bn+aug", complete, 0.70, [0.6, 0.70]),
        ("bn+aug", pruned, None, [0.3]),
        ("bn", complete, 0.65, [0.65, 0.6]),
        ("bn", failed, None, [0.1]),
    ])
    rows = structure_rows(study)
    assert [(r.family, r.trials, r.complete, r.pruned, r.failed) for r in rows] == [
        ("bn+aug", 3, 2, 1, 0), ("bn", 2, 1, 0, 1), ("baseline", 2, 2, 0, 0)]
    assert rows[0].median == pytest.approx(0.75) and rows[0].best == 0.80
    assert rows[0].epochs_to_best == 2 and rows[0].seconds_per_epoch == 2.0
    assert rows[2].reference == (66.02, 70.45) and rows[1].reference is None
    text = analysis(study, rows)
    assert ("bn+aug leads with 75.00% (2 trials), 10.00 percentage points ahead of bn "
            "(65.00%) and 14.00 percentage points ahead of the baseline (61.00%)") in text
    assert "best single trial is in bn+aug (80.00%), 15.00 percentage points above" in text
    assert "2.0s against 1.0s for bn, the cheapest: 2.00x" in text
    assert "gap of +10.00 percentage points" in text
    assert "Pruned trials (1) are left out" in text


def test_views_that_need_more_trials_are_skipped_with_a_note():
    study = synthetic([("baseline", TrialState.COMPLETE, 0.6, [0.5, 0.6])])
    views = {v.title: v for v in plots.optuna_views(study)}
    importances = views["Hyperparameter importances"]
    assert importances.figure is None
    assert importances.note == "skipped: needs at least 2 completed trials, the study has 1"
    assert views["Optimization history"].figure is not None
    assert analysis(study, structure_rows(study)).startswith("Only the baseline family")
    empty = optuna.create_study()
    assert all(v.figure is None for v in plots.optuna_views(empty))
    assert analysis(empty, structure_rows(empty)) == ("No trial has completed yet, so there "
                                                      "is nothing to compare.")


def test_final_curves_show_every_seed_of_a_repeated_finalize():
    run = {"history": {"loss": [2.0, 1.5], "accuracy": [0.3, 0.5]}}
    record = {"number": 1, "forced": False, "trial": 4, "epochs": 2, "train_images": 1500,
              "runs": [{**run, "seed": 4, "test_accuracy": 0.45, "test_loss": 1.6},
                       {**run, "seed": 5, "test_accuracy": 0.47, "test_loss": 1.55}]}
    figure = plots.final_curves(record)
    assert "2 seeds" in figure.layout.title.text
    assert TEST_NOTE in figure.layout.title.subtitle.text
    tests = [t for t in figure.data if t.legendgroup == "test"]
    assert [list(t.y) for t in tests] == [[1.6, 1.55], [0.45, 0.47]]
    assert sum(t.showlegend for t in figure.data) == 2  # One train entry, one test entry.


def test_the_search_writes_each_trial_curves_and_the_analysis_as_dashboard_notes(reported):
    """The dashboard shows them while the search runs: the workers wrote them, not report."""
    from optuna_dashboard import get_note

    study = load(reported[0], REPORTED)
    for frozen in study.get_trials():
        history = frozen.user_attrs["history"]
        note = get_note(optuna.Trial(study, frozen._trial_id))
        rows = [line for line in note.splitlines() if re.match(r"\| \d+ \|", line)]
        assert len(rows) == len(history["val_accuracy"])
        assert rows[-1].split(" | ")[4] == f"{history['val_accuracy'][-1]:.4f}"
    note = get_note(study)
    assert note.startswith(GENERATED)
    assert analysis(study, structure_rows(study)) in note
    assert TEST_NOTE in note


def test_a_note_keeps_what_a_user_wrote_above_the_generated_part():
    first = _with_generated("my remark", "table 1")
    assert first == f"my remark\n\n{GENERATED}\n\ntable 1"
    assert _with_generated(first, "table 2") == f"my remark\n\n{GENERATED}\n\ntable 2"
    assert _with_generated("", "table") == f"{GENERATED}\n\ntable"
    # Notes of studies written with the earlier marker, an HTML comment the dashboard showed.
    marker = "<!-- written by cifar-search after every trial; text above this line is kept -->"
    earlier = f"my remark\n\n{marker}\n\nold table"
    assert _with_generated(earlier, "table 2") == f"my remark\n\n{GENERATED}\n\ntable 2"
    assert "<" not in GENERATED
