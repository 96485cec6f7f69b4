"""Where studies live: a storage URL -> a SQLAlchemy engine and an Optuna ``RDBStorage``.

SQLite on one machine and PostgreSQL across machines go through the same code. Two settings
make them safe for several workers at once:

* SQLite transactions take the write lock when they begin (``BEGIN IMMEDIATE``). pysqlite
  otherwise starts a transaction at its first write, so a read that decides a write (Optuna
  claiming a queued trial, failing a stale one, telling a finished one) is not atomic and
  two workers can both act on what they read (optuna/optuna#4621). PostgreSQL needs nothing:
  Optuna reads those rows ``FOR UPDATE``.
* SQLite is refused on a network filesystem, where its locks do not hold.

The study's records and their rules live in :mod:`cifar_search.ledger`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import make_url

from cifar_search.errors import CifarSearchError, StudyLockedError

T = TypeVar("T")
STUDIES_DIR = Path("studies")
HEARTBEAT_SECONDS = 10
SQLITE_TIMEOUT_SECONDS = 60
SCHEMA_ATTEMPTS = 5
# Backends whose cross-process locks the ledger knows how to take.
DIALECTS = ("sqlite", "postgresql")
# Filesystems on which SQLite's file locks do not hold (https://sqlite.org/faq.html#q5).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "lustre",
                       "gpfs", "ceph", "glusterfs", "fuse.sshfs", "fuse.glusterfs",
                       "fuse.cephfs", "beegfs")


# A study's name becomes a file and a folder name: letters, digits, '.', '_', '-'.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_name(name: str) -> str:
    """``name``, or CifarSearchError if it is not a safe study name."""
    if not STUDY_NAME.fullmatch(name):
        raise CifarSearchError(
            f"study name {name!r} is not allowed: use 1 to 100 letters, digits, '.', '_' "
            f"or '-', starting with a letter or digit (it names files and folders)")
    return name


def default_url(study_name: str) -> str:
    """``sqlite:///studies/<study>.db`` as an absolute URL: the default home of a study."""
    return f"sqlite:///{(STUDIES_DIR / f'{check_study_name(study_name)}.db').resolve()}"


def study_url(study_name: str, url: str | None = None) -> str:
    """Where study ``study_name`` lives: ``url`` (a relative SQLite path made absolute), or
    its default home under ``studies/``."""
    check_study_name(study_name)
    return absolute_url(url) if url else default_url(study_name)


def absolute_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute (against the current folder), so it
    means the same file in every process that gets it."""
    path = sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    return _parse(url).set(database=str(path.resolve())).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite ``url`` (None for other backends or in-memory)."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _parse(url: str) -> sqlalchemy.engine.URL:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise CifarSearchError(f"not a storage URL: {url!r} (e.g. sqlite:///studies/x.db "
                               f"or postgresql://user@host/db)") from exc
    if parsed.get_backend_name() not in DIALECTS:
        raise CifarSearchError(f"unsupported storage {parsed.get_backend_name()!r}: use "
                               f"sqlite:///path.db on one machine or postgresql://... to "
                               f"share a study between machines")
    return parsed


def safe_url(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    return _parse(url).render_as_string(hide_password=True)


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (Linux's /proc/mounts; None elsewhere)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    path = Path(os.path.realpath(path))
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_local(path: Path, mounts: str | None = None) -> None:
    """Refuse a SQLite file on a network filesystem, where its locks do not hold."""
    kind = filesystem_type(path if path.exists() else path.parent, mounts)
    if kind in NETWORK_FILESYSTEMS or (kind or "").startswith("nfs"):
        raise CifarSearchError(
            f"{path} is on a network filesystem ({kind}), where SQLite's locks do not hold and "
            f"concurrent workers corrupt the database; share a study between machines with "
            f"PostgreSQL (--storage postgresql://user@host/db), or keep the SQLite file on a "
            f"local disk")


def _engine_kwargs(url: str, *, create: bool) -> dict[str, Any]:
    """Engine settings for ``url``; checks a SQLite file (exists unless ``create``, local)."""
    path = sqlite_path(url)
    if path is None:
        return {"pool_pre_ping": True}
    if not path.exists() and not create:
        raise CifarSearchError(f"no study database at {path} (run 'cifar-search search' "
                               f"first, or give --storage)")
    check_local(path.parent if not path.exists() else path)
    # Several local workers share one file: wait for the write lock instead of failing.
    # isolation_level=None: pysqlite leaves transactions to us (see _for_workers).
    return {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS, "isolation_level": None}}


def _for_workers(engine: sqlalchemy.engine.Engine, url: str) -> None:
    """Make SQLite safe for several workers: every transaction takes the write lock when it
    begins (SQLAlchemy's recipe for pysqlite), so that what it reads cannot change before it
    writes; a lock held past the busy timeout is reported as :class:`StudyLockedError`,
    naming the file, wherever Optuna or the ledger met it."""
    path = sqlite_path(url)
    if path is None:
        return

    @event.listens_for(engine, "begin")
    def begin(conn: sqlalchemy.engine.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "handle_error")
    def locked(context: sqlalchemy.engine.ExceptionContext) -> None:
        if "database is locked" in str(context.original_exception):
            raise StudyLockedError("the study's database", SQLITE_TIMEOUT_SECONDS, str(path))


def _storage_error(url: str, exc: Exception) -> CifarSearchError:
    if isinstance(exc, (sqlalchemy.exc.NoSuchModuleError, ImportError)):
        return CifarSearchError(f"no database driver for {make_url(url).drivername!r} "
                                f"(for PostgreSQL: pip install 'cifar-search[postgres]')")
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return CifarSearchError(f"cannot open storage {safe_url(url)}: {reason}")


def prepare(url: str, *, create: bool = False) -> None:
    """Check ``url`` and make the folder of a new SQLite file; raise CifarSearchError if bad."""
    _engine_kwargs(url, create=create)
    path = sqlite_path(url)
    if path is not None and create:
        path.parent.mkdir(parents=True, exist_ok=True)


def open_engine(url: str, *, create: bool = False) -> sqlalchemy.engine.Engine:
    """A SQLAlchemy engine on the study database; SQLite files are switched to WAL mode.

    WAL lets readers go on while one worker writes, which (with the busy timeout) keeps
    several local workers from failing with "database is locked".
    """
    prepare(url, create=create)
    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url, create=create))
        if (path := sqlite_path(url)) is not None:
            _switch_to_wal(engine, path)
        else:
            with engine.connect():
                pass  # Fails here, in one line, if the server does not answer.
        _for_workers(engine, url)
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, ImportError) as exc:
        raise _storage_error(url, exc) from exc
    return engine


def _switch_to_wal(engine: sqlalchemy.engine.Engine, path: Path) -> None:
    """Put the SQLite file in WAL mode (a no-op once it is).

    While another connection writes to a file still in rollback mode (workers creating one
    study together), SQLite refuses the switch at once with "database is locked", without
    waiting for the busy timeout, so the switch is retried for as long as that timeout.
    """
    def switch() -> bool:
        with engine.connect() as conn:  # Outside a transaction: autocommit mode.
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            try:
                dbapi.execute("PRAGMA journal_mode=WAL")
                return True
            except sqlite3.OperationalError as exc:
                if "database is locked" not in str(exc):
                    raise
                return False

    wait_for_lock(switch, "the study's database", path, max_pause=0.5)


def wait_for_lock(take: Callable[[], bool], what: str, path: Path, *,
                  max_pause: float) -> None:
    """Call ``take()`` until it gets a lock (returns True), pausing between tries, for as
    long as SQLite waits for its own lock; then raise :class:`StudyLockedError` naming
    ``what`` and ``path`` (a process stopped while holding it would block us for ever)."""
    deadline = time.monotonic() + SQLITE_TIMEOUT_SECONDS
    pause = 0.001
    while not take():
        if time.monotonic() >= deadline:
            raise StudyLockedError(what, SQLITE_TIMEOUT_SECONDS, str(path))
        time.sleep(pause)
        pause = min(2 * pause, max_pause)


def open_storage(url: str, *, create: bool = False,
                 heartbeat: int = HEARTBEAT_SECONDS) -> optuna.storages.RDBStorage:
    """Open ``url`` as an Optuna storage with heartbeats every ``heartbeat`` seconds.

    A trial whose worker has sent no heartbeat for three intervals is stale: the ledger fails
    and re-queues it. Raises CifarSearchError, with one line saying what is wrong, for a
    malformed URL, an unsupported backend, a missing SQLite file (unless ``create``), a
    SQLite file on a network filesystem, a database driver that is not installed, or a
    server that does not answer.
    """
    open_engine(url, create=create).dispose()

    def rdb_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # Heartbeats are "experimental" since 2.8.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            stored = optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url, create=create),
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
            )
        _for_workers(stored.engine, url)
        return stored

    try:
        return despite_schema_race(rdb_storage)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise _storage_error(url, exc) from exc


def set_heartbeat(stored: optuna.storages.RDBStorage, heartbeat: int) -> None:
    """Use the study's frozen heartbeat: every worker must judge staleness alike."""
    stored.heartbeat_interval = heartbeat
    stored.grace_period = 3 * heartbeat


def despite_schema_race(create: Callable[[], T]) -> T:
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


def load_study(name: str, storage: optuna.storages.BaseStorage, **kwargs: Any) -> optuna.Study:
    """Load an existing study, or raise CifarSearchError naming the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError as exc:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise CifarSearchError(
            f"no study named {name!r} in this storage (studies: {', '.join(names) or 'none'})"
        ) from exc
