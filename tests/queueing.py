"""Helpers shared by the queue and recovery tests: a spec, a study's row, claimed studies."""

from __future__ import annotations

from typing import Any

import optuna
import sqlalchemy as sa

from droptune.core.spec.study import StudySpec
from droptune.storage.jobs import queue, refits
from droptune.storage.optuna_bridge import ensure_study, optuna_storage
from droptune.storage.sql.db import create_engine, db_now, transaction
from droptune.storage.sql.tables import leases, studies
from droptune.storage.submit import submits


def spec(n: int = 5, **search: object) -> StudySpec:
    return StudySpec.model_validate(
        {"dataset": {"builtin": "iris"}, "search": {"n_trials": n, **search}}
    )


def study_row(db: sa.Engine | str, study_id: int) -> sa.Row[Any]:
    """A study's row, from an engine or a database URL (an engine made here is disposed)."""
    engine = create_engine(db) if isinstance(db, str) else db
    try:
        with transaction(engine) as conn:
            return conn.execute(sa.select(studies).where(studies.c.id == study_id)).one()
    finally:
        if isinstance(db, str):
            engine.dispose()


def refit_done(engine: sa.Engine, study_id: int) -> None:
    """End a study's refit as a worker would, without a test score (its spec held nothing
    out): every study ends with one since issue 22, and succeeds only then."""
    row = study_row(engine, study_id)
    assert (row.status, row.refit_state) == ("running", "ready"), row
    claim = refits.claim(engine, "refitter")
    assert claim is not None and claim.study_id == study_id
    assert refits.complete(engine, claim, "refitter", None, [])


def claimed(
    db_url: str, n: int, worker: str = "dead"
) -> tuple[sa.Engine, Any, int, queue.Claim, optuna.Study]:
    """A study of n slots, all claimed by one worker, its Optuna study created."""
    engine = create_engine(db_url)
    storage = optuna_storage(db_url)
    sp = spec(n)
    sid = submits.enqueue(engine, sp, "a")
    claim = queue.claim(engine, worker, n)
    assert claim is not None
    study = ensure_study(storage, claim.optuna_study, sp, sid)
    return engine, storage, sid, claim, study


def started_trial(
    db_url: str, n: int
) -> tuple[sa.Engine, Any, int, queue.Claim, optuna.Study, optuna.Trial]:
    """A study of n slots, all claimed by one worker, the first running a linked Optuna trial."""
    engine, storage, sid, claim, study = claimed(db_url, n)
    trial = study.ask()
    trial.suggest_float("dropout", 0.0, 0.8)
    queue.link_trial(
        engine, claim.leases[0].id, trial._trial_id, trial.number, trial.params, "dead"
    )
    return engine, storage, sid, claim, study, trial


def age_leases(engine: sa.Engine, seconds: float) -> None:
    """Put every lease's heartbeat `seconds` into the database clock's past."""
    with transaction(engine) as conn:
        conn.execute(leases.update().values(heartbeat_at=db_now(-seconds)))
