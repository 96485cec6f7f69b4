"""Shared fixtures and helpers: the real CIFAR-10 folder (``$CIFAR10_DIR`` or ``../shared``
beside the repo), the installed ``cifar-search`` command, and one small finalized study."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy

# The tests choose their storage themselves, whatever the caller's shell exported.
os.environ.pop("CIFAR_SEARCH_STORAGE", None)
REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "studies"
SHARED_COPY = REPO.parent / "shared" / "cifar10" / "cifar-10-batches-py"
CLI = str(Path(sys.executable).with_name("cifar-search"))
SMALL = ["--train-size", "1000", "--val-size", "500", "--max-epochs", "2"]
REPORTED = "small"
PG_URL = os.environ.get("CIFAR_SEARCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def run(*args: str, cwd: Path, data_dir: Path | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed command in ``cwd``; with ``check``, fail the test on a non-zero exit."""
    env = {**os.environ, "CIFAR10_DIR": str(data_dir) if data_dir else "", **(env or {})}
    done = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single ``cifar-search: error:`` line of a run that exited 2 without a traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-search: error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


@dataclass(frozen=True)
class CommittedStudy:
    """A row of the table in ``docs/studies/README.md``: what the docs say of a study."""

    name: str
    complete: int
    best: float
    test: float | None  # The one look at the test set, if finalized (mean over its seeds).

    @property
    def path(self) -> Path:
        return COMMITTED / f"{self.name}.db"


def committed_studies() -> list[CommittedStudy]:
    """The studies ``docs/studies/README.md`` lists (rows: study | ... | complete | best |
    test |, the test accuracy "-" where not finalized)."""
    rows = []
    for line in (COMMITTED / "README.md").read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            test = None if cells[-1] == "-" else float(cells[-1])
            rows.append(CommittedStudy(cells[0], int(cells[-3]), float(cells[-2]), test))
    return rows


def copy_of(study: CommittedStudy, folder: Path) -> str:
    """A storage URL of a copy of ``study`` in ``folder``: opening it may write (WAL files,
    Optuna's schema check), and the committed file must stay as it is."""
    target = folder / study.path.name
    shutil.copyfile(study.path, target)
    return f"sqlite:///{target}"


def load(cwd: Path, name: str) -> optuna.Study:
    """Study ``name`` in its default storage under ``cwd``."""
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd}/studies/{name}.db")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    # Resolved here: the tests run the CLI in other folders, and a user may have exported a
    # relative CIFAR10_DIR (the README's first command does).
    path = Path(os.environ.get("CIFAR10_DIR") or SHARED_COPY).resolve()
    if not (path / "data_batch_1").is_file():
        pytest.fail(f"the real CIFAR-10 folder is needed for the tests: set CIFAR10_DIR "
                    f"(looked at {path})")
    return path


@pytest.fixture(scope="session")
def cifar_train(data_dir):
    from cifar_search import data

    return data.load_train(data_dir)


@pytest.fixture(scope="session")
def reported(tmp_path_factory, data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """A small real study (3 trials, then finalize) and its ``report``: the folder it lives
    in, and the report run. Shared by the report and browser tests."""
    cwd = tmp_path_factory.mktemp("reported")
    run("search", "--study", REPORTED, "--n-trials", "3", *SMALL, cwd=cwd, data_dir=data_dir)
    run("finalize", "--study", REPORTED, cwd=cwd, data_dir=data_dir)
    return cwd, run("report", "--study", REPORTED, cwd=cwd)


# What psycopg says when no server listens: only then are the PostgreSQL tests skipped. Any
# other failure (a wrong password, a missing database) is an error the tests must show.
NO_SERVER = ("Connection refused", "No such file or directory", "could not translate host")


def _pg_available() -> str | None:
    """None if the test PostgreSQL server answers, else why not (no server listens)."""
    engine = sqlalchemy.create_engine(PG_URL)
    try:
        with engine.connect():
            return None
    except sqlalchemy.exc.OperationalError as exc:
        if not any(reason in str(exc) for reason in NO_SERVER):
            raise
        return f"no PostgreSQL server answers at {PG_URL}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """A fresh study database: a SQLite file, or a uniquely named study on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared.db"
        return
    reason = _pg_available()
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
    if reason:
        pytest.skip(reason)
    yield PG_URL


@pytest.fixture
def study_name(storage_url):
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=storage_url)
    except KeyError:
        pass
