"""The states a study, its refit, a worker and a lease can be in, and how a slot ends.

Each is a `StrEnum`, so a member *is* its string: it compares equal to the value the database
column holds and the API sends, and it is bound to SQL and written to JSON as that string. The
columns stay strings (no database enum type: adding a state would need a migration on
PostgreSQL and a table rebuild on SQLite), and `core/schemas.py` keeps its `Literal` types (the
OpenAPI document lists the strings); `tests/unit/test_states.py` checks both agree.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class StudyStatus(enum.StrEnum):
    """`droptune_studies.status`."""

    QUEUED = "queued"  # submitted, no slot claimed yet
    RUNNING = "running"  # a slot or its refit has been claimed
    SUCCEEDED = "succeeded"  # every trial counted and, when it has one, its refit done
    FAILED = "failed"  # out of retries, a refit out of attempts, or a spec this version can't run
    CANCELLED = "cancelled"


# Claims, retries and heartbeats look at active studies only; an ended one never changes again
# (so a delete, which needs an ended study, never races a claim).
ACTIVE: tuple[StudyStatus, ...] = (StudyStatus.QUEUED, StudyStatus.RUNNING)
ENDED: tuple[StudyStatus, ...] = (
    StudyStatus.SUCCEEDED,
    StudyStatus.FAILED,
    StudyStatus.CANCELLED,
)

# Which status may follow which (storage/jobs/queue.py, refits.py): a queued study fails (its
# spec cannot run) or is cancelled before any claim; it can only succeed through a claim.
LIFECYCLE: Mapping[StudyStatus, frozenset[StudyStatus]] = {
    StudyStatus.QUEUED: frozenset({StudyStatus.RUNNING, StudyStatus.FAILED, StudyStatus.CANCELLED}),
    StudyStatus.RUNNING: frozenset(ENDED),
    **{status: frozenset() for status in ENDED},
}


def may_follow(before: StudyStatus | str, after: StudyStatus | str) -> bool:
    """Whether a study may go from `before` to `after` (a status unchanged is no transition)."""
    return StudyStatus(after) in LIFECYCLE[StudyStatus(before)]


class RefitState(enum.StrEnum):
    """`droptune_studies.refit_state` (NULL: the study holds no rows out, so has no refit)."""

    WAITING = "waiting"  # for the search's last trial
    READY = "ready"  # claimable (again, after a failed attempt)
    RUNNING = "running"  # a worker holds its lease
    DONE = "done"  # scored and stored; the study succeeded with it
    SKIPPED = "skipped"  # the study ended otherwise (cancelled, failed) before it ran


# A refit still to come: the study's end turns it to SKIPPED.
REFIT_PENDING: tuple[RefitState, ...] = (RefitState.WAITING, RefitState.READY, RefitState.RUNNING)


class WorkerStatus(enum.StrEnum):
    """`droptune_workers.status` holds LIVE or STOPPED; LOST is derived when read (a live row
    whose heartbeat is older than the grace: its process died without saying so)."""

    LIVE = "live"
    LOST = "lost"
    STOPPED = "stopped"


class LeaseKind(enum.StrEnum):
    """`droptune_leases.kind`: what a lease holds."""

    TRIAL = "trial"  # a trial slot
    REFIT = "refit"  # the study's final refit (no trial, no slot)


class Outcome(enum.StrEnum):
    """What happens to a lease's slot when it ends (storage/jobs/lifecycle.py decides which)."""

    DONE = "done"  # the trial finished COMPLETE or PRUNED
    FAILED = "failed"  # the trial failed: retry its parameters, counting an attempt
    RELEASED = "released"  # the worker gave the slot back (shutdown): retry at once, no attempt
    DROPPED = "dropped"  # the study has ended (cancelled): nothing to give back
