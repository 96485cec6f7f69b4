"""Per-trial training checkpoints, kept in the study's own database.

A retried trial (its worker was killed, or interrupted) resumes from the last completed epoch
instead of starting over. The checkpoint lives in a table beside Optuna's, in the same
database, so whatever storage the workers share (one SQLite file, one PostgreSQL server) also
shares the checkpoints; there is no separate file store to set up across machines. Only the
latest epoch of a trial is kept, and it is removed when the trial ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

_METADATA = sa.MetaData()
_TABLE = sa.Table(
    "cifar_search_checkpoints",
    _METADATA,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("trial", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    payload: bytes


class CheckpointStore:
    """Latest-epoch checkpoints keyed by (study name, original trial number)."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self._engine = engine
        _METADATA.create_all(engine, checkfirst=True)

    def save(self, study: str, trial: int, epoch: int, payload: bytes) -> None:
        with self._engine.begin() as conn:
            conn.execute(_TABLE.delete().where(_TABLE.c.study == study, _TABLE.c.trial == trial))
            conn.execute(_TABLE.insert().values(study=study, trial=trial, epoch=epoch,
                                                payload=payload))

    def load(self, study: str, trial: int) -> Checkpoint | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(_TABLE.c.epoch, _TABLE.c.payload)
                .where(_TABLE.c.study == study, _TABLE.c.trial == trial)
            ).first()
        return None if row is None else Checkpoint(int(row.epoch), bytes(row.payload))

    def delete(self, study: str, trial: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(_TABLE.delete().where(_TABLE.c.study == study, _TABLE.c.trial == trial))

    def count(self, study: str) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_TABLE)
                                    .where(_TABLE.c.study == study)).scalar_one())
