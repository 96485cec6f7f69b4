"""Where studies live: storage URLs, heartbeats and retries, and the frozen study configuration.

Every storage is an Optuna ``RDBStorage`` on a SQLAlchemy URL, so SQLite on one machine and
PostgreSQL across machines go through the same code. Heartbeats let a live worker notice a
dead worker's RUNNING trial and re-queue it with the same parameters.
"""

from __future__ import annotations

import importlib.metadata
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from cifar_search.checkpoints import CheckpointStore
from cifar_search.config import StudyConfig
from cifar_search.errors import CifarSearchError

T = TypeVar("T")
STUDIES_DIR = Path("studies")
HEARTBEAT_SECONDS = 10
MAX_RETRIES = 3
SQLITE_TIMEOUT_SECONDS = 60
SCHEMA_ATTEMPTS = 5
CONFIG_ATTR = "config"


def default_url(study_name: str) -> str:
    """``sqlite:///studies/<study>.db``: the default home of a study, relative to the cwd."""
    return f"sqlite:///{STUDIES_DIR / f'{study_name}.db'}"


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _engine_kwargs(url: str, *, create: bool) -> dict[str, Any]:
    """Engine settings for ``url``; checks that a SQLite file exists unless ``create``."""
    try:
        path = _sqlite_path(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise CifarSearchError(f"not a storage URL: {url!r} (e.g. sqlite:///studies/x.db "
                               f"or postgresql://user@host/db)") from exc
    if path is None:
        return {"pool_pre_ping": True}
    if not path.exists() and not create:
        raise CifarSearchError(f"no study database at {path} (run 'cifar-search search' "
                               f"first, or give --storage)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several local workers share one file: wait for the write lock instead of failing.
    return {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}


def _storage_error(url: str, exc: Exception) -> CifarSearchError:
    if isinstance(exc, (sqlalchemy.exc.NoSuchModuleError, ImportError)):
        return CifarSearchError(f"no database driver for {make_url(url).drivername!r} "
                                f"(for PostgreSQL: pip install 'cifar-search[postgres]')")
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return CifarSearchError(f"cannot open storage {make_url(url)!r}: {reason}")


def open_engine(url: str, *, create: bool = False) -> sqlalchemy.engine.Engine:
    """A SQLAlchemy engine on the study database; SQLite files are switched to WAL mode.

    WAL lets readers go on while one worker writes, which (with the busy timeout) keeps
    several local workers from failing with "database is locked".
    """
    kwargs = _engine_kwargs(url, create=create)
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise _storage_error(url, exc) from exc
    return engine


def open_storage(url: str, *, create: bool = False,
                 heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.RDBStorage:
    """Open ``url`` as an Optuna storage with heartbeats every ``heartbeat`` seconds.

    A trial whose worker has sent no heartbeat for three intervals is failed by the next
    worker that starts a trial, and re-queued with the same parameters (three times at most).
    Raises CifarSearchError, with one line saying what is wrong, for a malformed URL, a
    missing SQLite file (unless ``create``), a database driver that is not installed, or a
    server that does not answer.
    """
    open_engine(url, create=create).dispose()

    def rdb_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # Heartbeats are "experimental" since 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url, create=create),
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=_retry_callback(),
            )

    try:
        return _despite_schema_race(rdb_storage)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise _storage_error(url, exc) from exc


def checkpoint_store(url: str) -> CheckpointStore:
    """The per-trial checkpoint table in the study database at ``url``."""
    engine = open_engine(url)
    try:
        return _despite_schema_race(lambda: CheckpointStore(engine))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise _storage_error(url, exc) from exc


def _despite_schema_race(create: Callable[[], T]) -> T:
    """Call ``create``, again if it fails while other workers create the same tables.

    Workers that start together on a new database race to create its schema; the losers
    find it created a moment later.
    """
    for attempt in range(SCHEMA_ATTEMPTS - 1):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return create()


def _retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRIES, inherit_intermediate_values=True
        )


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Re-queue a failed trial with the same parameters, as heartbeats do for dead workers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _retry_callback()(study, trial)


def load_study(name: str, storage: optuna.storages.BaseStorage, **kwargs: Any) -> optuna.Study:
    """Load an existing study, or raise CifarSearchError naming the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError as exc:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise CifarSearchError(
            f"no study named {name!r} in this storage (studies: {', '.join(names) or 'none'})"
        ) from exc


def versions() -> dict[str, str]:
    """Versions of the packages a study's results depend on."""
    names = ("cifar-search", "optuna", "keras", "tensorflow", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def frozen_config(study: optuna.Study) -> StudyConfig | None:
    """The configuration the study's first worker froze, or None for a fresh study."""
    values = study.user_attrs.get(CONFIG_ATTR)
    return None if values is None else StudyConfig.from_dict(values)


def resolve_config(frozen: StudyConfig | None, given: dict[str, Any]) -> StudyConfig:
    """The study's configuration: the frozen one, checked against the settings ``given``.

    ``given`` holds only settings the user set explicitly; a fresh study takes them over
    the defaults, an existing one refuses any that differ from what it froze.
    """
    if frozen is None:
        return StudyConfig(**given)
    differ = {k: (v, getattr(frozen, k)) for k, v in given.items() if getattr(frozen, k) != v}
    if differ:
        detail = ", ".join(f"{k}={new!r} (study has {old!r})" for k, (new, old) in differ.items())
        raise CifarSearchError(f"settings differ from the study's frozen configuration: {detail}")
    return frozen


def freeze(study: optuna.Study, config: StudyConfig, data_fingerprint: str) -> None:
    """Write the configuration, data fingerprint and versions into the study, once."""
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    study.set_user_attr("data_fingerprint", data_fingerprint)
    study.set_user_attr("versions", versions())


def check_fingerprint(study: optuna.Study, data_fingerprint: str) -> None:
    frozen = study.user_attrs.get("data_fingerprint")
    if frozen is not None and frozen != data_fingerprint:
        raise CifarSearchError(
            f"this worker's CIFAR-10 data (fingerprint {data_fingerprint}) differs from the "
            f"study's ({frozen}); point --data-dir at the same copy"
        )
