"""The final refit as a leased job: claim it, end it, store its result and models.

When a study's last trial is counted, its `refit_state` goes from `waiting` to `ready`
(queue._count_done); every study submitted since issue 22 has one (with unseen rows,
evaluation.holdout or evaluation.test_dataset, it is scored on them; without, it is the model
alone), and a study stored before without unseen rows has none (`refit_state` NULL).
A worker claims it like a trial slot: one row of `droptune_leases` of kind `refit`, heartbeat and
recovered like any lease. Its end goes through one of three doors:

| how it ends | the refit | the study |
|---|---|---|
| `complete` (scored, models stored) | done | succeeded |
| `give_back(failed=True)` (an error) | ready, an attempt more | failed past max_retries |
| recovery (its worker died) | ready, an attempt more | failed past max_retries |
| `give_back(failed=False)` (shutdown) | ready | unchanged |
| the study ended meanwhile (cancel) | lease deleted | unchanged |
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.core.spec.study import StudySpec
from droptune.core.states import ACTIVE, LeaseKind, RefitState, StudyStatus
from droptune.storage.jobs.queue import notify, refit_back, runnable
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import leases, models, studies

MAX_MODEL_BYTES = 512 * 2**20  # a model file larger than this is scored but not stored


@dataclass(frozen=True)
class RefitClaim:
    lease_id: int
    study_id: int
    optuna_study: str
    spec: StudySpec
    attempt: int


@dataclass(frozen=True)
class ModelFile:
    role: str  # "recommended" | "best"
    dropout: float
    params: dict[str, float]
    data: bytes


def ready(models: Collection[str]) -> list[sa.ColumnElement[bool]]:
    """Studies whose refit a worker with these custom models would claim (`claim` and the queue
    depth of `depth.py` use these conditions)."""
    s = studies.c
    return [s.status == StudyStatus.RUNNING, s.refit_state == RefitState.READY, runnable(models)]


def claim(engine: Engine, worker_id: str, models: Collection[str] = ()) -> RefitClaim | None:
    """Lease the most urgent study's refit that is ready (and that a worker with these custom
    `models` can run), or None."""
    s = studies.c
    pick = (
        sa.select(s.id)
        .where(*ready(models))
        .order_by(s.priority.desc(), s.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with transaction(engine) as conn:
        row = conn.execute(
            studies.update()
            .where(s.id == pick, s.refit_state == RefitState.READY)
            .values(refit_state=RefitState.RUNNING)
            .returning(s.id, s.spec, s.optuna_study, s.refit_attempts)
        ).one_or_none()
        if row is None:
            return None
        notify(conn, row.id, work=False)  # the refit runs
        lease_id = conn.execute(
            leases.insert()
            .values(
                study_id=row.id,
                worker_id=worker_id,
                attempt=row.refit_attempts,
                kind=LeaseKind.REFIT,
            )
            .returning(leases.c.id)
        ).scalar_one()
    return RefitClaim(
        int(lease_id), int(row.id), str(row.optuna_study), StudySpec.stored(row.spec), row[3]
    )


def _take(conn: sa.Connection, c: RefitClaim, worker_id: str) -> sa.Row[Any] | None:
    """Delete the refit's lease if this worker still holds it; the study row, locked, or None
    when the lease was lost (recovery took it over) or the study has ended."""
    gone = conn.execute(
        leases.delete()
        .where(leases.c.id == c.lease_id, leases.c.worker_id == worker_id)
        .returning(leases.c.id)
    ).one_or_none()
    if gone is None:
        return None
    study = conn.execute(
        sa.select(studies).where(studies.c.id == c.study_id).with_for_update()
    ).one()
    return study if study.status in ACTIVE else None


def complete(
    engine: Engine,
    c: RefitClaim,
    worker_id: str,
    result: dict[str, Any] | None,
    files: list[ModelFile],
) -> bool:
    """Store the test score and the models and end the study as succeeded, in one transaction.
    False (nothing stored) when the lease was lost or the study ended meanwhile."""
    with transaction(engine) as conn:
        study = _take(conn, c, worker_id)
        if study is None:
            return False
        conn.execute(models.delete().where(models.c.study_id == c.study_id))
        for f in files:
            if len(f.data) <= MAX_MODEL_BYTES:
                conn.execute(
                    models.insert().values(
                        study_id=c.study_id,
                        role=f.role,
                        dropout=f.dropout,
                        params=f.params,
                        file=f.data,
                    )
                )
        conn.execute(
            studies.update()
            .where(studies.c.id == c.study_id)
            .values(
                refit_state=RefitState.DONE,
                refit_result=result,
                status=StudyStatus.SUCCEEDED,
                ended_at=db_now(),
            )
        )
        notify(conn, c.study_id)
    return True


def give_back(
    engine: Engine, c: RefitClaim, worker_id: str, *, failed: bool, reason: str | None
) -> bool:
    """End the refit's lease without a result: claimable again (an attempt counted when it
    failed). False when the lease was lost or the study had ended."""
    with transaction(engine) as conn:
        study = _take(conn, c, worker_id)
        if study is None:
            return False
        refit_back(conn, study, attempt=failed, reason=reason)
    return True


def model_file(engine: Engine, study_id: int, role: str) -> ModelFile | None:
    with transaction(engine, read_only=True) as conn:
        row = conn.execute(
            sa.select(models).where(models.c.study_id == study_id, models.c.role == role)
        ).one_or_none()
    if row is None:
        return None
    return ModelFile(row.role, float(row.dropout), dict(row.params), bytes(row.file))


def state(engine: Engine, study_id: int) -> str | None:
    """The study's refit state (None: it has no refit)."""
    with transaction(engine, read_only=True) as conn:
        value = conn.execute(
            sa.select(studies.c.refit_state).where(studies.c.id == study_id)
        ).scalar_one_or_none()
    return None if value is None else str(value)
