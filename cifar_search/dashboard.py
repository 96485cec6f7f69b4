"""The study in optuna-dashboard: notes written as the search runs, each trial's curves PNG
attached to the trial, and the server.

After every trial a worker writes that trial's per-epoch curves as its note and the study's
structure comparison and analysis as the study's note, so the dashboard shows them during
the search, on any storage (notes live in the database). The PNG curves need a browser to
draw (kaleido), so ``report`` attaches them instead.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from cifar_search.config import HISTORY_KEYS
from cifar_search.report import CURVES_FILENAME, markdown_table, structure_markdown
from cifar_search.storage import STUDIES_DIR

# optuna-dashboard lists, in a trial's view, the artifacts recorded on its study under this
# prefix followed by "<trial id>:<artifact id>".
DASHBOARD_TRIAL_ARTIFACT = "dashboard:artifacts:{trial_id}:"


# A note's generated part starts here; what a user wrote above it in the dashboard is kept.
# A visible line: the dashboard shows an HTML comment as text.
GENERATED = "*Written by cifar-search after every trial; text above this line is kept.*"
# The marker of notes written before 2026-11-28, still in studies of that time.
_EARLIER = "<!-- written by cifar-search after every trial; text above this line is kept -->"


def _with_generated(note: str, generated: str) -> str:
    own = note.split(GENERATED, 1)[0].split(_EARLIER, 1)[0].rstrip()
    return f"{own}\n\n{GENERATED}\n\n{generated}".lstrip()


def curves_markdown(history: dict[str, list[float]]) -> str:
    """A trial's per-epoch curves (``history`` user attribute) as a Markdown table."""
    keys = [k for k in (*HISTORY_KEYS, "seconds") if history.get(k)]
    epochs = max((len(history[k]) for k in keys), default=0)
    rows = [[str(epoch + 1), *(f"{history[k][epoch]:.4f}" if epoch < len(history[k]) else "-"
                               for k in keys)] for epoch in range(epochs)]
    return markdown_table(["epoch", *keys], rows) if rows else "No epoch finished."


def write_notes(study: optuna.Study, trial: optuna.Trial,
                history: dict[str, list[float]]) -> None:
    """Write finished ``trial``'s curves (its ``history``) as its note and the study's
    comparison and analysis as the study's note (replacing what this function wrote before,
    keeping the rest)."""
    from optuna_dashboard import get_note, save_note

    curves = curves_markdown(history)
    save_note(trial, _with_generated(get_note(trial), f"### Curves\n\n{curves}"))
    save_note(study, _with_generated(get_note(study), structure_markdown(study)))


def artifact_store(study_name: str) -> FileSystemArtifactStore:
    """The study's artifact folder, ``studies/<study>/artifacts``, shared with the dashboard."""
    path = STUDIES_DIR / study_name / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def _has_curves(system_attrs: dict[str, Any], trial_id: int, filename: str) -> bool:
    """Whether the trial lists ``filename`` among its artifacts (deleted ones read as null)."""
    prefix = DASHBOARD_TRIAL_ARTIFACT.format(trial_id=trial_id)
    records = [json.loads(value) for key, value in system_attrs.items()
               if key.startswith(prefix)]
    return any(record and record["filename"] == filename for record in records)


def upload_curves(study: optuna.Study, storage: optuna.storages.BaseStorage,
                  store: FileSystemArtifactStore) -> None:
    """Attach each finished trial's curves PNG to the trial in optuna-dashboard, once.

    ``optuna.artifacts.upload_artifact`` cannot attach a file to a finished trial (storages
    refuse to update one), so the file goes into the artifact store and its record onto the
    study, under the per-trial key that optuna-dashboard lists in the trial's view. That record
    marks the trial as done: running this again uploads only newly finished trials.
    """
    from cifar_search import plots  # Deferred: see write_report.

    study_id = storage.get_study_id_from_name(study.study_name)
    system_attrs = storage.get_study_system_attrs(study_id)
    pending = {}
    for trial in study.get_trials(deepcopy=False):
        if not (trial.state.is_finished() and trial.user_attrs.get("history")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if not _has_curves(system_attrs, trial_id, CURVES_FILENAME.format(number=trial.number)):
            pending[trial_id] = trial
    with tempfile.TemporaryDirectory() as folder:
        files = {trial_id: Path(folder, CURVES_FILENAME.format(number=trial.number))
                 for trial_id, trial in pending.items()}
        plots.write_pngs({files[i]: plots.trial_curves(t) for i, t in pending.items()})
        for trial_id, path in files.items():
            artifact_id = str(uuid.uuid4())
            with path.open("rb") as stream:
                store.write(artifact_id, stream)
            record = {"artifact_id": artifact_id, "filename": path.name,
                      "mimetype": "image/png", "encoding": None}
            storage.set_study_system_attr(
                study_id, DASHBOARD_TRIAL_ARTIFACT.format(trial_id=trial_id) + artifact_id,
                json.dumps(record))
