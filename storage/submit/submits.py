"""Submitting a study: one transaction that checks the spec against its data sets, the owner's
quotas and a worker's memory, honours an Idempotency-Key, and queues the study."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.spec.study import StudySpec
from droptune.core.states import RefitState, StudyStatus
from droptune.storage import datasets
from droptune.storage.jobs.queue import notify, optuna_study_name
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies
from droptune.storage.submit import admission, custom_models, idempotency
from droptune.storage.submit.quotas import STUDIES, Quotas, check_studies, lock_owner


@dataclass(frozen=True)
class Submitted:
    study_id: int
    created: bool  # False: the study an Idempotency-Key made before, answered again


def enqueue(engine: Engine, spec: StudySpec, owner: str) -> int:
    """Store a new study as `queued` and return its id (no quotas, no key: see `submit`)."""
    return submit(engine, spec, owner).study_id


def submit(
    engine: Engine,
    spec: StudySpec,
    owner: str,
    *,
    quotas: Quotas | None = None,
    key: str | None = None,
    memory: admission.MemoryLimit | None = None,
) -> Submitted:
    """Store a new study as `queued`, the owner's quotas checked (when given) and its
    Idempotency-Key recorded (storage/submit/idempotency.py), in one transaction: the key's first
    study instead when it was sent before with the same body. Nothing is stored on a refusal."""
    body = idempotency.digest(spec)
    try:
        with transaction(engine) as conn:
            lock_owner(conn, owner, STUDIES)  # quota and key checks of one owner take turns
            first = None if key is None else idempotency.first_study(conn, owner, key, body)
            if first is not None:
                return Submitted(first, created=False)
            study_id = _store(conn, spec, owner, quotas, memory)
            if key is not None:
                idempotency.remember(conn, owner, key, body, study_id)
            notify(conn, study_id)
            return Submitted(study_id, created=True)
    except sa.exc.IntegrityError as exc:
        if key is None or not idempotency.lost_race(exc):
            raise
    return Submitted(idempotency.after_race(engine, owner, key, body), created=False)


def _store(
    conn: Connection,
    spec: StudySpec,
    owner: str,
    quotas: Quotas | None,
    memory: admission.MemoryLimit | None = None,
) -> int:
    """Check the spec against its data sets, the owner's quotas and a worker's memory, then
    insert the study."""
    summary = None
    if spec.dataset.id is not None:
        spec, summary = datasets.fit_spec(conn, spec, owner)
    if spec.evaluation.test_dataset is not None:
        datasets.check_test_dataset(conn, spec, owner)
    if quotas is not None:
        check_studies(conn, owner, spec, quotas)
    if spec.model.kind == "custom":
        custom_models.check_advertised(conn, spec.model.name or "")
    elif memory is not None:  # a custom model's size is known only once a worker builds it
        admission.admit(conn, spec, summary, memory)
    study_id = conn.execute(
        studies.insert()
        .values(
            owner=owner,
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=StudyStatus.QUEUED,
            priority=spec.priority,
            n_trials=spec.search.n_trials,
            max_retries=spec.search.max_retries,
            max_failed=spec.search.max_failed,
            dataset_id=spec.dataset.id,
            # every study ends with a model to take home (one without unseen rows, unscored)
            refit_state=RefitState.WAITING,
            test_dataset_id=spec.evaluation.test_dataset,
            custom_model=spec.model.name if spec.model.kind == "custom" else None,
        )
        .returning(studies.c.id)
    ).scalar_one()
    conn.execute(
        studies.update()
        .where(studies.c.id == study_id)
        .values(optuna_study=optuna_study_name(study_id, spec.name))
    )
    return int(study_id)
