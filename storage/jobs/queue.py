"""Queue SQL: enqueue, claim trial slots, link, heartbeat, finish, cancel (`stale.py`: the SQL
recovery uses to find and take over lost leases).

A claim is one short transaction. On PostgreSQL the study is picked and its slots reserved by one
`UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`; on SQLite (which drops
FOR UPDATE) the same statement runs inside BEGIN IMMEDIATE, which serialises writers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.errors import Conflict, NotFound
from droptune.core.retry import RetryPolicy
from droptune.core.spec.study import StudySpec
from droptune.core.states import (
    ACTIVE,
    REFIT_PENDING,
    LeaseKind,
    RefitState,
    StudyStatus,
)
from droptune.core.states import Outcome as Outcome  # re-exported: what `finish` is told
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import leases, retries, studies

# A study that ends otherwise than by its refit: a refit still to come never runs.
REFIT_SKIPPED = sa.case(
    (studies.c.refit_state.in_(REFIT_PENDING), RefitState.SKIPPED),
    else_=studies.c.refit_state,
)
NOTIFY_CHANNEL = "droptune_queue"  # work may have arrived: idle workers listen
STUDY_CHANNEL = "droptune_study"  # a study changed (payload: its id): the API's event streams


@dataclass(frozen=True)
class Lease:
    id: int
    study_id: int
    attempt: int
    params: dict[str, float] | None  # set when the slot retries earlier parameters


@dataclass(frozen=True)
class Claim:
    study_id: int
    optuna_study: str
    spec: StudySpec
    leases: list[Lease]


OPTUNA_NAME_MAX = 200  # droptune_studies.optuna_study is VARCHAR(200)


def optuna_study_name(study_id: int, name: str | None = None) -> str:
    """The Optuna study's name, which the dashboard lists: the study's own name when it has one
    (the id keeps it unique), shortened to fit the column (a 200-character name plus its id
    was a 500 on PostgreSQL)."""
    if not name:
        return f"droptune-{study_id}"
    suffix = f" (droptune-{study_id})"
    keep = OPTUNA_NAME_MAX - len(suffix)
    return (name if len(name) <= keep else name[: keep - 1] + "…") + suffix


def _least(a: Any, b: Any) -> Any:
    return sa.case((a < b, a), else_=b)


def notify(conn: Connection, study_id: int | None = None, *, work: bool = True) -> None:
    """PostgreSQL NOTIFY, sent when the transaction commits (SQLite listeners poll): idle
    workers that work may have arrived (`work`), and the API's event streams that `study_id`
    changed ('' when the caller does not know which: every watched study is checked)."""
    if conn.dialect.name != "postgresql":
        return
    params = {"s": STUDY_CHANNEL, "id": "" if study_id is None else str(study_id)}
    if work:
        params["q"] = NOTIFY_CHANNEL
    sql = "SELECT pg_notify(:s, :id)" + (", pg_notify(:q, '')" if work else "")
    conn.execute(sa.text(sql), params)


def runnable(models: Collection[str]) -> sa.ColumnElement[bool]:
    """Studies a worker with these custom models can run: the built-in models', and those whose
    registered model it loaded."""
    return sa.or_(studies.c.custom_model.is_(None), studies.c.custom_model.in_(list(models)))


def open_slots(models: Collection[str]) -> list[sa.ColumnElement[bool]]:
    """Studies with trial slots a worker with these custom models would claim (`claim`, `peek`
    and the queue depth of `depth.py` all use these conditions)."""
    s = studies.c
    return [s.status.in_(ACTIVE), s.slots_claimed < s.n_trials, runnable(models)]


def claim(
    engine: Engine,
    worker_id: str,
    max_slots: int,
    study_id: int | None = None,
    models: Collection[str] = (),
) -> Claim | None:
    """Reserve up to `max_slots` trial slots of the most urgent study (or of `study_id`, the one
    the batch was sized for) that a worker with `models` can run; None when none is open."""
    s = studies.c
    open_ = open_slots(models)
    if study_id is not None:
        open_.append(s.id == study_id)
    pick = (
        sa.select(s.id)
        .where(*open_)
        .order_by(s.priority.desc(), s.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    reserve = (
        studies.update()
        .where(s.id == pick)
        .values(
            # Every SET expression reads the row as it was, so last_claim is the count reserved.
            last_claim=_least(s.n_trials - s.slots_claimed, max_slots),
            slots_claimed=_least(s.n_trials, s.slots_claimed + max_slots),
            status=StudyStatus.RUNNING,
            started_at=sa.func.coalesce(s.started_at, db_now()),
        )
        .returning(s.id, s.last_claim, s.spec, s.optuna_study)
    )
    with transaction(engine) as conn:
        row = conn.execute(reserve).one_or_none()
        if row is None:
            return None
        picked, n, spec, optuna_study = row
        claimed = _lease_slots(conn, picked, n, worker_id)
        notify(conn, picked, work=False)  # queued -> running
    return Claim(picked, optuna_study, StudySpec.stored(spec), claimed)


def _lease_slots(conn: Connection, study_id: int, n: int, worker_id: str) -> list[Lease]:
    """One lease per reserved slot: waiting retries first (their parameters and attempt),
    fresh slots for the rest."""
    waiting = conn.execute(
        sa.select(retries.c.id, retries.c.params, retries.c.attempt)
        .where(retries.c.study_id == study_id)
        .order_by(retries.c.id)
        .limit(n)
    ).all()
    if waiting:
        conn.execute(retries.delete().where(retries.c.id.in_([w.id for w in waiting])))
    slots: list[dict[str, Any]] = [
        {"study_id": study_id, "worker_id": worker_id, "attempt": w.attempt, "params": w.params}
        for w in waiting
    ]
    slots += [
        {"study_id": study_id, "worker_id": worker_id, "attempt": 0, "params": None}
        for _ in range(n - len(waiting))
    ]
    ids = conn.execute(
        leases.insert().returning(leases.c.id, sort_by_parameter_order=True), slots
    ).scalars()
    return [
        Lease(id=i, study_id=study_id, attempt=sl["attempt"], params=sl["params"])
        for i, sl in zip(ids, slots, strict=True)
    ]


def link_trial(
    engine: Engine,
    lease_id: int,
    trial_id: int,
    number: int,
    params: dict[str, float],
    worker_id: str,
) -> bool:
    """Record the Optuna trial a lease runs (and renew it: linking is a sign of life). False
    when the lease was lost meanwhile: recovered, or taken over by a recovery
    (`stale.take_stale`)."""
    with transaction(engine) as conn:
        n = conn.execute(
            leases.update()
            .where(leases.c.id == lease_id, leases.c.worker_id == worker_id)
            .values(trial_id=trial_id, trial_number=number, params=params, heartbeat_at=db_now())
        ).rowcount
        if n == 1:
            notify(conn, work=False)  # a new running trial
    return n == 1


@dataclass(frozen=True)
class Beat:
    live_leases: frozenset[int]  # leases this worker still holds
    ended_studies: dict[int, str]  # studies of those leases that have ended: id -> status


def heartbeat_leases(conn: Connection, worker_id: str, lease_ids: Iterable[int]) -> Beat:
    """Renew the leases the worker still works on; any it let go of go stale and are retried."""
    rows = conn.execute(
        leases.update()
        .where(leases.c.worker_id == worker_id, leases.c.id.in_(list(lease_ids)))
        .values(heartbeat_at=db_now())
        .returning(leases.c.id, leases.c.study_id)
    ).all()
    study_ids = {r.study_id for r in rows}
    ended = conn.execute(
        sa.select(studies.c.id, studies.c.status).where(
            studies.c.id.in_(study_ids), studies.c.status.not_in(ACTIVE)
        )
    ).all()
    return Beat(frozenset(r.id for r in rows), {int(e.id): str(e.status) for e in ended})


def finish(engine: Engine, lease_id: int, outcome: Outcome, reason: str | None = None) -> bool:
    """End a lease and account for its slot. False when the lease was already gone."""
    return end_lease(engine, leases.c.id == lease_id, outcome, reason)


def end_lease(engine: Engine, where: Any, outcome: Outcome, reason: str | None) -> bool:
    """Delete the lease `where` selects and account for its slot, in one transaction."""
    with transaction(engine) as conn:
        row = conn.execute(
            leases.delete()
            .where(where)
            .returning(
                leases.c.study_id,
                leases.c.attempt,
                leases.c.params,
                leases.c.trial_number,
                leases.c.kind,
            )
        ).one_or_none()
        if row is None:
            return False
        study = conn.execute(
            sa.select(studies).where(studies.c.id == row.study_id).with_for_update()
        ).one()
        if study.status not in ACTIVE or outcome is Outcome.DROPPED:
            notify(conn, study.id, work=False)  # its trial stopped
            return True
        if row.kind == LeaseKind.REFIT:
            # Recovery ends a lost refit as RELEASED (no trial): its worker died in it, which
            # counts an attempt (a refit that kills its worker must not loop for ever).
            refit_back(conn, study, attempt=True, reason=reason)
            return True
        if outcome is Outcome.DONE:
            _count_done(conn, study)
        else:
            _give_back(conn, study, row, outcome, reason)
    return True


def _count_done(conn: Connection, study: sa.Row[Any]) -> None:
    """Count a finished trial; the last one ends the search: the study succeeds, or its refit
    becomes claimable (it succeeds when the refit is done)."""
    done = study.n_done + 1
    values: dict[str, Any] = {"n_done": done}
    if done >= study.n_trials:
        values |= search_ended(study)
    conn.execute(studies.update().where(studies.c.id == study.id).values(**values))
    notify(conn, study.id, work="refit_state" in values)  # a ready refit is work


def search_ended(study: sa.Row[Any]) -> dict[str, Any]:
    """The row's values once its last trial has finished: its refit becomes claimable, or, with
    no refit, the study succeeds."""
    if study.refit_state == RefitState.WAITING:
        return {"refit_state": RefitState.READY}
    if study.refit_state is None:
        return {"status": StudyStatus.SUCCEEDED, "ended_at": db_now()}
    return {}


def retry_policy(study: sa.Row[Any]) -> RetryPolicy:
    """The retry policy stored on a study's row (its spec's search.max_retries, max_failed)."""
    return RetryPolicy(max_retries=study.max_retries, max_failed=study.max_failed)


def _give_back(
    conn: Connection, study: sa.Row[Any], lease: Any, outcome: Outcome, reason: str | None
) -> None:
    """Return the slot to the queue and, while attempts remain, its parameters with it (a slot
    without parameters, whose trial never started, goes back alone)."""
    values: dict[str, Any] = {"slots_claimed": studies.c.slots_claimed - 1}
    policy = retry_policy(study)
    retry = policy.trial(lease.attempt, outcome) if lease.params is not None else None
    if retry is not None and retry.again:
        conn.execute(
            retries.insert().values(
                study_id=study.id,
                params=lease.params,
                attempt=retry.attempt,
                origin_trial=lease.trial_number,
            )
        )
    elif retry is not None:
        # Out of retries: the slot goes back with fresh parameters; the study fails past
        # max_failed such give-ups.
        given_up = study.n_given_up + 1
        values["n_given_up"] = given_up
        if policy.study_fails(given_up):
            values |= {
                "status": StudyStatus.FAILED,
                "ended_at": db_now(),
                "reason": f"{given_up} trials failed after {study.max_retries} retries each "
                f"(max_failed={study.max_failed}); last: {reason or 'unknown'}",
                "refit_state": REFIT_SKIPPED,
            }
    conn.execute(studies.update().where(studies.c.id == study.id).values(**values))
    notify(conn, study.id)


def refit_back(conn: Connection, study: sa.Row[Any], *, attempt: bool, reason: str | None) -> None:
    """A refit lease ended without a result: the refit is claimable again, counting an attempt
    when it failed; past max_retries attempts the study fails with the reason."""
    retry = retry_policy(study).refit(study.refit_attempts, counted=attempt)
    values: dict[str, Any] = {"refit_state": RefitState.READY, "refit_attempts": retry.attempt}
    if not retry.again:
        values |= {
            "status": StudyStatus.FAILED,
            "ended_at": db_now(),
            "reason": f"the final refit failed {retry.attempt} times; last: {reason or 'unknown'}",
            "refit_state": RefitState.SKIPPED,
        }
    conn.execute(studies.update().where(studies.c.id == study.id).values(**values))
    notify(conn, study.id)


def ended_status(engine: Engine, study_id: int) -> str | None:
    """The status of a study that has ended (succeeded, failed, cancelled; `deleted` when its
    row is gone), else None."""
    with transaction(engine, read_only=True) as conn:
        status = conn.execute(
            sa.select(studies.c.status).where(studies.c.id == study_id)
        ).scalar_one_or_none()
    # "deleted" is no status: it tells a worker its study's row is gone.
    return "deleted" if status is None else None if status in ACTIVE else str(status)


def cancel(engine: Engine, study_id: int, owner: str | None, by: str = "its owner") -> StudyStatus:
    """Stop new claims at once; running trials see the status at the end of their epoch.
    `owner` None: an admin's cancel, of any owner's study."""
    owned = [] if owner is None else [studies.c.owner == owner]
    with transaction(engine) as conn:
        status = conn.execute(
            sa.select(studies.c.status).where(studies.c.id == study_id, *owned).with_for_update()
        ).scalar_one_or_none()
        if status is None:
            raise NotFound(f"study {study_id} not found")
        if status not in ACTIVE:
            raise Conflict(f"study {study_id} has already ended ({status})")
        _close(conn, study_id, StudyStatus.CANCELLED, f"cancelled by {by}")
        notify(conn, study_id, work=False)
    return StudyStatus.CANCELLED


def peek(engine: Engine, models: Collection[str] = ()) -> tuple[int, StudySpec, int] | None:
    """The study the next claim would pick: (id, spec, open slots); a hint for sizing a batch.

    A study whose stored spec this version cannot run (stored before a check was added) is
    failed with the reason, not handed to a worker that would fail every trial of it."""
    s = studies.c
    while True:
        with transaction(engine, read_only=True) as conn:
            row = conn.execute(
                sa.select(s.id, s.spec, s.n_trials - s.slots_claimed)
                .where(*open_slots(models))
                .order_by(s.priority.desc(), s.id)
                .limit(1)
            ).one_or_none()
        if row is None:
            return None
        spec = StudySpec.runnable(row[1])
        if isinstance(spec, StudySpec):
            return int(row[0]), spec, int(row[2])
        fail_study(engine, int(row[0]), f"its spec cannot run on this version: {spec}")


def fail_study(engine: Engine, study_id: int, reason: str) -> bool:
    """End an active study as failed with `reason`; False if it had already ended."""
    with transaction(engine) as conn:
        ended = _close(conn, study_id, StudyStatus.FAILED, reason)
        notify(conn, study_id)
    return ended


def _close(conn: Connection, study_id: int, status: StudyStatus, reason: str) -> bool:
    """End an active study with `status` and drop its waiting retries; False if it had ended."""
    n = conn.execute(
        studies.update()
        .where(studies.c.id == study_id, studies.c.status.in_(ACTIVE))
        .values(status=status, reason=reason, ended_at=db_now(), refit_state=REFIT_SKIPPED)
    ).rowcount
    conn.execute(retries.delete().where(retries.c.study_id == study_id))
    return bool(n)
