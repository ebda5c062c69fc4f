"""The counts `/metrics` reports, read from the database (droptune's tables and Optuna's).

Everything a metric needs is already stored: studies and their slots in `droptune_studies`,
trials with their state and `train_seconds`/`attempt`/`reason` attributes in Optuna's tables,
workers' heartbeats in `droptune_workers`. Reading them at scrape time makes every count
cluster-wide and durable (a worker or API restart loses nothing); see service/middleware/metrics.py.

Only trials of droptune's own studies count (Optuna's studies joined by name), in case the
database holds other Optuna studies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from droptune.core.states import ACTIVE, RefitState, StudyStatus
from droptune.storage.jobs.lifecycle import Why
from droptune.storage.jobs.registry import count_live
from droptune.storage.sql.db import transaction
from droptune.storage.sql.tables import studies

STATUSES: tuple[str, ...] = tuple(s.value for s in StudyStatus)
# Optuna's trial states that end a trial, by the names its `trials.state` column stores.
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
TRAINED_STATES = ("COMPLETE", "PRUNED")  # those with `train_seconds`
# Training time of one trial: seconds for a small table up to hours for a large CNN.
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# What recovery writes as the reason of a trial whose worker stopped heartbeating (JSON, as
# Optuna stores user attributes).
LEASE_LOST_JSON = json.dumps(Why.LEASE_LOST.value)

# Optuna's own tables, read only (their layout has been stable since Optuna 2).
_ostudies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
_otrials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"), sa.column("state"))
_oattrs = sa.table(
    "trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json")
)
# A native enum on PostgreSQL (`trialstate`), text on SQLite: compared as text on both.
_STATE = sa.cast(_otrials.c.state, sa.String(8))
_OURS = _otrials.join(_ostudies, _ostudies.c.study_id == _otrials.c.study_id).join(
    studies, studies.c.optuna_study == _ostudies.c.study_name
)
_OURS_ATTRS = (
    _oattrs.join(_otrials, _otrials.c.trial_id == _oattrs.c.trial_id)
    .join(_ostudies, _ostudies.c.study_id == _otrials.c.study_id)
    .join(studies, studies.c.optuna_study == _ostudies.c.study_name)
)


@dataclass(frozen=True)
class Durations:
    """A histogram's state: cumulative counts per upper bound (`DURATION_BUCKETS`), the count
    of observations and their sum."""

    cumulative: Sequence[int]
    count: int = 0
    total: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    studies: dict[str, int]  # status -> studies; every status present
    open_slots: int  # trial slots of active studies not handed to a worker
    refits_ready: int  # final refits waiting for a worker
    finished: dict[str, int]  # Optuna state (COMPLETE, PRUNED, FAIL) -> trials
    retried: int  # trials that ran parameters again after an earlier attempt failed
    recovered: int  # trials recovery failed because their worker stopped heartbeating
    live_workers: int
    durations: dict[str, Durations] = field(default_factory=dict)  # COMPLETE, PRUNED


def snapshot(engine: Engine, grace_seconds: float) -> Snapshot:
    """Every count, read in one read-only transaction (the live workers in a second one)."""
    with transaction(engine, read_only=True) as conn:
        by_status = _studies_by_status(conn)
        open_slots, refits_ready = _queue_depth(conn)
        finished = _finished(conn)
        retried = _count_attr(conn, "attempt", _oattrs.c.value_json != "0")
        recovered = _count_attr(conn, "reason", _oattrs.c.value_json == LEASE_LOST_JSON)
        durations = _durations(conn)
    return Snapshot(
        studies=by_status,
        open_slots=open_slots,
        refits_ready=refits_ready,
        finished=finished,
        retried=retried,
        recovered=recovered,
        live_workers=count_live(engine, grace_seconds),
        durations=durations,
    )


def _studies_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.select(studies.c.status, sa.func.count()).group_by(studies.c.status)
    ).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def _queue_depth(conn: Connection) -> tuple[int, int]:
    s = studies.c
    open_slots, ready = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(s.n_trials - s.slots_claimed), 0),
            sa.func.coalesce(
                sa.func.sum(sa.case((s.refit_state == RefitState.READY, 1), else_=0)), 0
            ),
        ).where(s.status.in_(ACTIVE))
    ).one()
    return max(0, int(open_slots)), int(ready)


def _finished(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.select(_STATE, sa.func.count())
        .select_from(_OURS)
        .where(_STATE.in_(FINISHED_STATES))
        .group_by(_STATE)
    ).all()
    counts = dict.fromkeys(FINISHED_STATES, 0)
    counts.update({str(s): int(n) for s, n in rows})
    return counts


def _count_attr(conn: Connection, key: str, condition: sa.ColumnElement[bool]) -> int:
    n = conn.execute(
        sa.select(sa.func.count()).select_from(_OURS_ATTRS).where(_oattrs.c.key == key, condition)
    ).scalar_one()
    return int(n)


def _durations(conn: Connection) -> dict[str, Durations]:
    """`train_seconds` of trained trials, bucketed in SQL: one row per state, whatever the
    number of trials."""
    seconds = sa.cast(_oattrs.c.value_json, sa.Float)
    columns = [sa.func.sum(sa.case((seconds <= b, 1), else_=0)) for b in DURATION_BUCKETS]
    rows = conn.execute(
        sa.select(_STATE, sa.func.count(), sa.func.sum(seconds), *columns)
        .select_from(_OURS_ATTRS)
        .where(_oattrs.c.key == "train_seconds", _STATE.in_(TRAINED_STATES))
        .group_by(_STATE)
    ).all()
    out = {s: Durations(cumulative=[0] * len(DURATION_BUCKETS)) for s in TRAINED_STATES}
    for state, count, total, *cumulative in rows:
        out[str(state)] = Durations(
            cumulative=[int(c or 0) for c in cumulative], count=int(count), total=float(total or 0)
        )
    return out
