"""Where studies live: storage URLs, heartbeats and retries, and the frozen study configuration.

Every storage is an Optuna ``RDBStorage`` on a SQLAlchemy URL, so SQLite on one machine and
PostgreSQL across machines go through the same code. Heartbeats let a live worker notice a
dead worker's RUNNING trial and re-queue it with the same parameters.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from cifar_search.config import StudyConfig
from cifar_search.errors import CifarSearchError

STUDIES_DIR = Path("studies")
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
CONFIG_ATTR = "config"


def default_url(study_name: str) -> str:
    """``sqlite:///studies/<study>.db``: the default home of a study, relative to the cwd."""
    return f"sqlite:///{STUDIES_DIR / f'{study_name}.db'}"


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def open_storage(url: str, *, create: bool = False) -> optuna.storages.RDBStorage:
    """Open ``url`` with heartbeats on; a SQLite file must exist unless ``create`` is set.

    Raises CifarSearchError, with one line saying what is wrong, for a malformed URL, a
    database driver that is not installed, or a server that does not answer.
    """
    try:
        path = _sqlite_path(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise CifarSearchError(f"not a storage URL: {url!r} (e.g. sqlite:///studies/x.db "
                               f"or postgresql://user@host/db)") from exc
    engine_kwargs: dict[str, Any] = {}
    if path is not None:
        if not path.exists() and not create:
            raise CifarSearchError(f"no study database at {path} (run 'cifar-search search' "
                                   f"first, or give --storage)")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several local workers share one file: wait for the write lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():  # Heartbeats and retries are "experimental" since 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3, inherit_intermediate_values=True
                ),
            )
    except (sqlalchemy.exc.NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise CifarSearchError(f"no database driver for {make_url(url).drivername!r} "
                               f"(for PostgreSQL: pip install 'cifar-search[postgres]')") from exc
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        raise CifarSearchError(f"cannot open storage {make_url(url)!r}: {reason}") from exc


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
