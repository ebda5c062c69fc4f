"""The SQL recovery uses to find lost leases and take them over, by the database clock.

A recovery first takes a stale lease over (`take_stale`: one conditional statement), so a worker
that heartbeat since the stale read keeps its lease; from then on that worker can neither renew
nor link it. Ending the lease goes through `queue.end_lease`, like every other way out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from droptune.core.states import Outcome, StudyStatus
from droptune.storage.jobs.queue import end_lease
from droptune.storage.sql.db import db_now, transaction
from droptune.storage.sql.tables import leases, studies

RECOVERY = "recovery"  # the worker_id of a lease a recovery has taken over


def take_stale(engine: Engine, lease_id: int, grace_seconds: float) -> tuple[bool, int | None]:
    """Take over a lease if it is still stale, before recovery touches its Optuna trial:
    (taken, its trial id). Not taken when its worker heartbeat since the stale read; once taken,
    that worker can neither renew nor link it (both match on worker_id), so it learns the lease
    is lost and stops training it."""
    with transaction(engine) as conn:
        row = conn.execute(
            leases.update()
            .where(leases.c.id == lease_id, leases.c.heartbeat_at < db_now(-grace_seconds))
            .values(worker_id=RECOVERY)
            .returning(leases.c.trial_id)
        ).one_or_none()
    if row is None:
        return False, None
    return True, None if row.trial_id is None else int(row.trial_id)


def keep_params(engine: Engine, lease_id: int, params: dict[str, float]) -> bool:
    """Record the parameters of the trial a lease's worker created but never linked, on a lease
    recovery has taken over, so that giving the slot back retries them."""
    with transaction(engine) as conn:
        n = conn.execute(
            leases.update()
            .where(
                leases.c.id == lease_id,
                leases.c.worker_id == RECOVERY,
                leases.c.trial_id.is_(None),
            )
            .values(params=params)  # a retry's trial carries the lease's params: the same
        ).rowcount
    return n == 1


def release_unlinked(engine: Engine, lease_id: int, reason: str | None = None) -> bool:
    """Give back the slot of a lease recovery took over (`take_stale`) that never linked a
    trial. False, and nothing changes, for a lease recovery does not hold: its worker is alive
    and keeps it, or another recovery gave it back already."""
    where = sa.and_(
        leases.c.id == lease_id, leases.c.worker_id == RECOVERY, leases.c.trial_id.is_(None)
    )
    return end_lease(engine, where, Outcome.RELEASED, reason)


@dataclass(frozen=True)
class StaleLease:
    id: int
    study_id: int
    trial_id: int | None
    optuna_study: str


def stale_leases(engine: Engine, grace_seconds: float) -> list[StaleLease]:
    """Leases whose heartbeat is older than the grace period, by the database clock."""
    with transaction(engine, read_only=True) as conn:
        rows = conn.execute(
            sa.select(leases.c.id, leases.c.study_id, leases.c.trial_id, studies.c.optuna_study)
            .join(studies, studies.c.id == leases.c.study_id)
            .where(leases.c.heartbeat_at < db_now(-grace_seconds))
        ).all()
    return [StaleLease(r.id, r.study_id, r.trial_id, r.optuna_study) for r in rows]


# Optuna's own tables, read only (their layout has been stable since Optuna 2).
_ostudies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
_otrials = sa.table(
    "trials", sa.column("trial_id"), sa.column("number"), sa.column("study_id"), sa.column("state")
)
_oattrs = sa.table(
    "trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json")
)


@dataclass(frozen=True)
class LeasedTrial:
    """A RUNNING trial of a running study, with the lease id its worker gave it."""

    trial_id: int
    number: int
    optuna_study: str
    lease: int


def running_leased_trials(engine: Engine) -> list[LeasedTrial]:
    """The RUNNING trials of the running studies whose `lease` user attribute is an integer,
    in one statement (a queued study has no trials yet). One statement, not two ORM reads per
    running study: the API runs this every few seconds, in the process that answers polls."""
    s, o, t, a = studies.c, _ostudies.c, _otrials.c, _oattrs.c
    query = (
        sa.select(t.trial_id, t.number, s.optuna_study, a.value_json)
        .select_from(
            studies.join(_ostudies, o.study_name == s.optuna_study)
            .join(_otrials, t.study_id == o.study_id)
            .join(_oattrs, a.trial_id == t.trial_id)
        )
        # A native enum on PostgreSQL (`trialstate`), text on SQLite: compared as text on both.
        .where(s.status == StudyStatus.RUNNING, sa.cast(t.state, sa.String(8)) == "RUNNING")
        .where(a.key == "lease")
    )
    with transaction(engine, read_only=True) as conn:
        rows = conn.execute(query).all()
    found = []
    for r in rows:
        lease = json.loads(r.value_json)  # as Optuna decodes its user attributes
        if isinstance(lease, int):
            found.append(LeasedTrial(int(r.trial_id), int(r.number), str(r.optuna_study), lease))
    return found


def live_lease_ids(engine: Engine, lease_ids: Iterable[int]) -> set[int]:
    """Which of these leases still exist."""
    with transaction(engine, read_only=True) as conn:
        ids = conn.execute(sa.select(leases.c.id).where(leases.c.id.in_(list(lease_ids))))
        return {int(i) for i in ids.scalars()}
