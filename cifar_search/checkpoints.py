"""Per-trial training checkpoints, kept in the study's own database.

A retried trial (its worker was killed, stopped or interrupted) resumes from the last
completed epoch instead of starting over. The checkpoint lives in a table beside Optuna's, in
the same database, so whatever storage the workers share also shares the checkpoints.

A checkpoint belongs to one trial, named by the storage's trial id (unique across the
studies of a storage, unlike a study name and trial number, which a deleted and re-created
study reuses), and is tagged with a hash of the configuration it was trained with, which a
resuming trial checks. Only an unfinished trial holds one: it is written only while its trial
is RUNNING (in the same transaction that checks it), moved to the retry when the ledger
re-queues the trial, and swept once its trial is finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

_METADATA = sa.MetaData()
TABLE = sa.Table(
    "cifar_search_trial_checkpoints",
    _METADATA,
    sa.Column("trial_id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, nullable=False, index=True),
    sa.Column("config_hash", sa.String(64), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)
# Optuna's own trials table (only the columns read here; states are stored by name).
_TRIALS = sa.table("trials", sa.column("trial_id"), sa.column("study_id"), sa.column("state"))
_UNFINISHED = ("RUNNING", "WAITING")


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a training configuration (a ``TrainConfig.to_dict()``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    config_hash: str
    payload: bytes


class CheckpointStore:
    """Latest-epoch checkpoints keyed by the storage's trial id."""

    def __init__(self, engine: sa.engine.Engine) -> None:
        self._engine = engine
        _METADATA.create_all(engine, checkfirst=True)

    def save(self, trial_id: int, study_id: int, config: str, epoch: int,
             payload: bytes) -> bool:
        """Store the checkpoint if trial ``trial_id`` is still RUNNING; whether it was.

        A worker that was stopped past its heartbeats finds its trial failed (and its retry
        maybe running elsewhere) and must not overwrite the retry's checkpoint.
        """
        with self._engine.begin() as conn:
            state = conn.execute(sa.select(sa.cast(_TRIALS.c.state, sa.String))
                                 .where(_TRIALS.c.trial_id == trial_id)
                                 .with_for_update()).scalar()
            if state != "RUNNING":
                return False
            conn.execute(TABLE.delete().where(TABLE.c.trial_id == trial_id))
            conn.execute(TABLE.insert().values(trial_id=trial_id, study_id=study_id,
                                               config_hash=config, epoch=epoch,
                                               payload=payload))
        return True

    def load(self, trial_id: int) -> Checkpoint | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(TABLE.c.epoch, TABLE.c.config_hash, TABLE.c.payload)
                               .where(TABLE.c.trial_id == trial_id)).first()
        return None if row is None else Checkpoint(int(row.epoch), row.config_hash,
                                                   bytes(row.payload))

    def delete(self, trial_id: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(TABLE.delete().where(TABLE.c.trial_id == trial_id))

    def move(self, from_trial_id: int, to_trial_id: int) -> None:
        """Hand a failed trial's checkpoint to its retry."""
        with self._engine.begin() as conn:
            conn.execute(TABLE.update().where(TABLE.c.trial_id == from_trial_id)
                         .values(trial_id=to_trial_id))

    def sweep(self, study_id: int) -> int:
        """Delete the checkpoints of the study's finished trials, and of any trial that no
        longer exists (a deleted study's); how many."""
        unfinished = sa.select(_TRIALS.c.trial_id).where(
            sa.cast(_TRIALS.c.state, sa.String).in_(_UNFINISHED))  # A PostgreSQL enum.
        existing = sa.select(_TRIALS.c.trial_id)
        with self._engine.begin() as conn:
            return conn.execute(TABLE.delete().where(sa.or_(
                sa.and_(TABLE.c.study_id == study_id, TABLE.c.trial_id.not_in(unfinished)),
                TABLE.c.trial_id.not_in(existing)))).rowcount

    def owners(self, study_id: int) -> dict[int, tuple[int, str]]:
        """Trial id -> (epoch, configuration hash) of each checkpoint of the study."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(TABLE.c.trial_id, TABLE.c.epoch, TABLE.c.config_hash)
                                .where(TABLE.c.study_id == study_id)).all()
        return {int(r.trial_id): (int(r.epoch), r.config_hash) for r in rows}
